//! A local store on a full disk: the write that does not fit fails with a
//! clear error naming the object, everything written before stays whole,
//! and no partial file is left. Needs a small filesystem: the test mounts a
//! 256 KiB tmpfs (root only; it says it skipped otherwise).

use bytes::Bytes;
use inception_core::settings::{Settings, StoreSettings};
use inception_core::Store;
use std::process::Command;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_stops_writes_clearly_and_keeps_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(dir.path())
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root)");
        return;
    }
    let _mount = Mount(dir.path().to_path_buf());
    let settings =
        StoreSettings { url: format!("file://{}", dir.path().display()), ..Settings::defaults().unwrap().store };
    let store = Store::open(&settings).unwrap();
    let chunk = |i: u8| Bytes::from(vec![i; 40 * 1024]);
    let mut written = Vec::new();
    let failure = loop {
        let key = format!("datasets/flowers/train-{:05}", written.len());
        match store.put_new(&key, chunk(written.len() as u8)).await {
            Ok(()) => written.push(key),
            Err(e) => break (key, e.to_string()),
        }
        assert!(written.len() < 20, "256 KiB cannot hold 20 objects of 40 KiB");
    };
    let (key, message) = failure;
    eprintln!("after {} objects: {message}", written.len());
    assert!(written.len() >= 3, "some objects fit before the disk filled: {}", written.len());
    assert!(message.contains(&key) && message.to_lowercase().contains("no space left"), "{message}");
    for (i, k) in written.iter().enumerate() {
        assert_eq!(store.get(k).await.unwrap(), chunk(i as u8), "{k} intact");
    }
    assert!(!store.exists(&key).await.unwrap(), "the failed object is not visible");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("datasets/flowers"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains('#'))
        .collect();
    assert!(
        leftovers.is_empty()
            || store.remove_stale_temporaries("datasets", std::time::Duration::ZERO) == leftovers.len(),
        "{leftovers:?}"
    );
}
