//! The config parser on arbitrary text: parsed and resolved, or refused with an error
//! that names the problem, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raven_server::config::FileConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = toml::from_str::<FileConfig>(text) {
        let _ = file.resolve();
    }
});
