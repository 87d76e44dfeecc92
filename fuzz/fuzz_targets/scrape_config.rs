//! Prometheus `scrape_configs` files with relabeling: any text is jobs or an
//! error with its line, never a panic; relabeling any discovered target or
//! sample leaves only storable labels.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let jobs = match vigil_scrape::parse(text) {
        Ok(jobs) => jobs,
        Err((line, _)) => {
            // YAML counts a lone CR as a line break too.
            let lines = text.split(['\n', '\r']).count();
            assert!(line <= lines + 1, "error line {line} past the end");
            return;
        }
    };
    let discovered = [
        ("127.0.0.1:9100", vec![("__meta_x", "a\nb"), ("env", "prod")]),
        ("db", vec![("__meta_etcd_key", "/t/db")]),
    ];
    for job in &jobs {
        for (address, labels) in &discovered {
            let t = vigil_scrape::Target {
                address: address.to_string(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            };
            if let Ok(Some(r)) = vigil_scrape::target::resolve(job, &t) {
                assert!(!r.labels.keys().any(|k| k.starts_with("__")), "{r:?}");
                assert!(r.labels.contains_key("job") && r.labels.contains_key("instance"));
                assert!(r.timeout <= r.interval);
            }
        }
        let sample: BTreeMap<String, String> = [("__name__", "up"), ("job", "x"), ("code", "200")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let _ = job.metric_relabel.process(sample);
    }
});
