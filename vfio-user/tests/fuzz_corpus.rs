//! Replays the committed `message_parser` fuzz corpus through the same functions the fuzz target
//! calls, on stable Rust (CI runs no nightly).

use std::path::Path;

#[test]
fn fuzz_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/message_parser");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the seed corpus is committed")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "corpus at {} is too small",
        dir.display()
    );
    let mut handled = 0u64;
    for f in &files {
        let data = std::fs::read(f).unwrap();
        hwrr_vfio_user::fuzzing::parse_messages(&data);
        handled += hwrr_vfio_user::fuzzing::serve_bytes(&data);
    }
    // VERSION plus at least one request per seed reached the device.
    assert!(
        handled >= 2 * files.len() as u64,
        "only {handled} requests handled"
    );
}

#[test]
fn seeds_exercise_the_server() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/message_parser");
    let data = std::fs::read(dir.join("region_write_read")).unwrap();
    assert_eq!(hwrr_vfio_user::fuzzing::serve_bytes(&data), 3);
    // Unframeable garbage ends the connection after VERSION.
    let data = std::fs::read(dir.join("garbage_header")).unwrap();
    assert_eq!(hwrr_vfio_user::fuzzing::serve_bytes(&data), 1);
}
