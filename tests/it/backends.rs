//! One test suite for every storage backend (restic's pattern): the local
//! directory and an S3-compatible object store (s3s-fs, started here).

use crate::common::s3;

use cairn::backend::{Backend, FileRef, LocalBackend, S3Backend, MULTIPART_THRESHOLD};
use cairn::repo::FileKind;
use cairn::Kind;

fn name(i: u32) -> String {
    format!("{:064x}", i as u128 * 0x9E37_79B9_7F4A_7C15)
}

/// What every backend must do.
fn suite(b: &dyn Backend) {
    // An empty location has no repository.
    let err = b.read(&FileRef::config()).unwrap_err();
    assert_eq!(err.kind(), Kind::NoRepository, "{err}");
    b.create().unwrap();
    b.write(&FileRef::config(), b"{\"version\":1}").unwrap();
    assert_eq!(b.read(&FileRef::config()).unwrap(), b"{\"version\":1}");
    assert!(b.create().is_err(), "create refuses an existing repository");

    // Whole files, ranges, existence, removal.
    let pack = FileRef::new(FileKind::Pack, name(1));
    let data: Vec<u8> = (0..(MULTIPART_THRESHOLD as u32 + (3 << 20)))
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    b.write(&pack, &data).unwrap(); // large enough for a multipart upload
    assert_eq!(b.read(&pack).unwrap(), data);
    assert_eq!(
        b.read_range(&pack, 12_345_678, 1000).unwrap(),
        &data[12_345_678..12_346_678]
    );
    assert!(b.exists(&pack).unwrap());
    // A size that is no multiple of a disk block (a local backend writes
    // large files around the page cache in aligned pieces, then the tail).
    let odd = FileRef::new(FileKind::Pack, name(3));
    let odd_data: Vec<u8> = (0..(5u32 << 20) + 4097 + 13)
        .map(|i| (i * 13 + i / 999) as u8)
        .collect();
    b.write(&odd, &odd_data).unwrap();
    assert!(b.read(&odd).unwrap() == odd_data);
    assert_eq!(
        b.read_range(&odd, (4 << 20) - 5, 10).unwrap(),
        &odd_data[(4 << 20) - 5..(4 << 20) + 5]
    );
    b.remove(&odd).unwrap();
    assert!(
        b.read_range(&pack, data.len() as u64 - 10, 100).is_err(),
        "reading past the end fails"
    );
    let missing = FileRef::new(FileKind::Pack, name(2));
    assert!(!b.exists(&missing).unwrap());
    assert!(b.read(&missing).is_err());

    // Listing: names and sizes per kind, with more entries than one page holds.
    for i in 0..1100 {
        b.write(
            &FileRef::new(FileKind::Lock, name(100 + i)),
            &i.to_le_bytes(),
        )
        .unwrap();
    }
    b.write(&FileRef::new(FileKind::Index, name(5)), b"index")
        .unwrap();
    let locks = b.list(FileKind::Lock).unwrap();
    assert_eq!(locks.len(), 1100);
    assert!(locks.iter().all(|(n, s)| n.len() == 64 && *s == 4));
    assert_eq!(b.list(FileKind::Index).unwrap(), vec![(name(5), 5)]);
    assert_eq!(
        b.list(FileKind::Pack).unwrap(),
        vec![(name(1), data.len() as u64)]
    );
    assert!(b.list(FileKind::Snapshot).unwrap().is_empty());
    let wal = FileRef::new(
        FileKind::Wal,
        format!("000000010000000000000001.{}", name(9)),
    );
    b.write(&wal, b"w").unwrap();
    assert_eq!(b.list(FileKind::Wal).unwrap().len(), 1);
    // One WAL name's files, among names before and after it and its claim.
    for (seg, id) in [(1u32, 10u32), (2, 11), (2, 12), (3, 13), (0x12, 14)] {
        let n = format!("0000000100000000000000{seg:02X}.{}", name(id));
        b.write(&FileRef::new(FileKind::Wal, n), b"ww").unwrap();
    }
    b.write(
        &FileRef::new(FileKind::Wal, "000000010000000000000002"),
        b"claim",
    )
    .unwrap();
    let two = "000000010000000000000002.";
    assert_eq!(
        b.list_prefix(FileKind::Wal, two).unwrap(),
        vec![
            (format!("{two}{}", name(11)), 2),
            (format!("{two}{}", name(12)), 2)
        ]
    );
    assert!(b
        .list_prefix(FileKind::Wal, "000000010000000000000004.")
        .unwrap()
        .is_empty());
    assert_eq!(b.list(FileKind::Wal).unwrap().len(), 6);

    // Overwriting a (content-addressed) file with the same bytes is harmless.
    b.write(&FileRef::new(FileKind::Index, name(5)), b"index")
        .unwrap();
    assert_eq!(b.list(FileKind::Index).unwrap().len(), 1);

    // Removal is idempotent.
    b.remove(&pack).unwrap();
    b.remove(&pack).unwrap();
    assert!(!b.exists(&pack).unwrap());
    assert!(b.list(FileKind::Pack).unwrap().is_empty());
}

#[test]
fn local_backend_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    suite(&LocalBackend::new(dir.path().join("repo")));
}

/// The same on tmpfs, whose O_DIRECT support differs by kernel version.
#[cfg(target_os = "linux")]
#[test]
fn local_backend_passes_the_suite_on_tmpfs() {
    let shm = std::path::Path::new("/dev/shm");
    assert!(shm.is_dir(), "this test needs /dev/shm (tmpfs)");
    let dir = tempfile::tempdir_in(shm).unwrap();
    suite(&LocalBackend::new(dir.path().join("repo")));
}

/// `S3Backend` takes its endpoint and credentials from the environment, and
/// this process runs every end-to-end test on parallel threads: setting
/// variables here would race with them (and with C libraries reading the
/// environment). So the suite runs in a child, this same test binary given
/// only [`s3_suite_in_a_child`] and the server's environment.
#[test]
fn s3_backend_passes_the_suite() {
    let server = s3::S3Server::start();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "backends::s3_suite_in_a_child", "--ignored"])
        .args(["--test-threads=1", "--nocapture"])
        .envs(server.env())
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the S3 suite failed in its child:\n{stdout}\n{stderr}"
    );
}

const CHILD: &str = "CAIRN_TEST_S3_SUITE_CHILD";

#[test]
#[ignore = "run by s3_backend_passes_the_suite, with an S3 server in its environment"]
fn s3_suite_in_a_child() {
    if std::env::var_os(CHILD).is_none() {
        eprintln!("skipped: s3_backend_passes_the_suite runs this with a server");
        return;
    }
    suite(&S3Backend::new("s3://bucket/suite").unwrap());
}
