//! Replays every file of the fuzz corpus (and any crash artifacts kept there) through the fuzz
//! target's check, so stable CI runs what the fuzzer found.

use std::path::Path;

#[test]
fn fuzz_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/trace_reader");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus directory is committed") {
        let path = entry.unwrap().path();
        if path.is_file() {
            hwrr_formats::fuzzing::check_untrusted_trace(&std::fs::read(&path).unwrap());
            files += 1;
        }
    }
    assert!(files >= 3, "fuzz corpus has only {files} files");
}
