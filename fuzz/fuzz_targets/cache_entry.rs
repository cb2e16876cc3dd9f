//! Any bytes as a kernel cache entry, looked up under a key: the first byte says how long the
//! key is, the key follows, then the entry (so the fuzzer can match an entry's own key and
//! reach the payload checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize).min(rest.len());
    let (key, entry) = rest.split_at(n);
    let key = String::from_utf8_lossy(key);
    if let Ok((header, payload)) = kiln_compile::cache::decode(entry, "cpu", &key) {
        assert_eq!(header.len as usize, payload.len());
    }
});
