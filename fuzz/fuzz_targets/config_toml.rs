//! The server configuration file (`Config::parse_str`): operators write it, but a config
//! mounted from elsewhere (a ConfigMap, say) must still only ever produce a refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `*_file` keys are read at parse time: a path to a device or a proc file would block the
    // fuzzer rather than test the parser. (Escapes could spell such a path too.)
    if ["dev/", "proc/", "sys/", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
    {
        return;
    }
    match Config::parse_str(text) {
        Ok(config) => {
            for host in config.registries.keys() {
                assert!(config.registry(host).is_some());
            }
        }
        Err(ConfigError::Invalid(problems)) => {
            let lines = text.split('\n').count();
            for p in &problems {
                let _ = p.to_string();
                if let Some(line) = p.line {
                    assert!(
                        (1..=lines).contains(&line),
                        "{p} but the text has {lines} lines"
                    );
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
