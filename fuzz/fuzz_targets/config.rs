//! Config parsing against arbitrary text. Invariants: no panic; every error names the file;
//! every accepted job has a valid name and a usable allow-list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match tokenwarden::Config::parse(text, Path::new("/fuzz/tokenwarden.toml")) {
        Ok(config) => {
            for job in &config.jobs {
                assert!(!job.name.is_empty());
                let _ = job.effective_allow_list();
                if let tokenwarden::Schedule::Cron(c) = &job.schedule {
                    let _ = c.next_after(std::time::SystemTime::UNIX_EPOCH);
                }
            }
        }
        Err(e) => assert!(e.to_string().contains("/fuzz/tokenwarden.toml"), "{e}"),
    }
});
