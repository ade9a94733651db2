//! The filter's configuration parser and compiler: any bytes either compile or are refused
//! with an error (defining no metric); a config that compiles round-trips through JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlep_contract::FilterConfig;
use mlep_filter::compiled::Compiled;
use mlep_filter::host::MemHost;

fuzz_target!(|bytes: &[u8]| {
    let mut host = MemHost::default();
    match Compiled::from_json(bytes, &mut host) {
        Err(_) => assert!(host.names.is_empty(), "a refused config defined metrics"),
        Ok(c) => {
            let cfg = FilterConfig::from_json(bytes).expect("compiled, so it parses");
            let again = serde_json::to_vec(&cfg).expect("serializes");
            assert_eq!(FilterConfig::from_json(&again).ok(), Some(cfg));
            for e in &c.endpoints {
                assert_eq!(e.table.len(), mlep_contract::BUCKETS as usize);
                assert!(e.table.iter().all(|v| usize::from(*v) < e.variants.len()));
            }
        }
    }
});
