#![no_main]
//! Any bytes as the body of a WAL payload in the column layout (after its
//! magic number): replay gets an error or batches that Arrow's full validation
//! accepts, never a panic or an allocation the bytes do not hold. What is read is
//! written again in the same layout and reads back the same. (Payloads of older
//! logs go to Arrow's own IPC reader, which is not vigil's parser.)

use libfuzzer_sys::fuzz_target;
use vigil_storage::wal::{decode_payload, encode_payload};

fuzz_target!(|data: &[u8]| {
    let mut payload = u32::MAX.to_le_bytes().to_vec();
    payload.extend_from_slice(data);
    let Ok(tables) = decode_payload(&payload) else {
        return;
    };
    for (table, batch) in &tables {
        for column in batch.columns() {
            if let Err(e) = column.to_data().validate_full() {
                panic!("table {table}: a decoded column fails validation: {e}");
            }
        }
    }
    let again = encode_payload(&tables).expect("decoded tables encode");
    assert!(
        again.starts_with(&u32::MAX.to_le_bytes()),
        "re-encoded in another layout"
    );
    let back = decode_payload(&again).expect("a re-encoded payload decodes");
    assert_eq!(back, tables, "a payload does not read back the same");
});
