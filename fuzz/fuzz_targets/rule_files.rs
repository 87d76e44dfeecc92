//! Rule files, their templates and Alertmanager-format routing files: any
//! text is an error or a result, never a panic or a hang.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vigil_rules::{load_file, Data, Routing, Template};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = load_file(Path::new("fuzz.yml"), text, Duration::from_secs(60));
    let _ = Routing::parse(text);
    if let Ok(t) = Template::parse(text) {
        let labels = BTreeMap::from([("host".to_string(), "a".to_string())]);
        let _ = t.render(&Data {
            labels: &labels,
            value: 1.5,
        });
    }
});
