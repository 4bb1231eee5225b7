//! Issue 26, item 1: `wal-fetch` reads the next segments ahead into a
//! spool while PostgreSQL replays, and the next `wal-fetch` takes its
//! segment from there (spec/postgres.md, "Recovery reads ahead").

use crate::common::{code_and_stderr, noise, Env};
use std::time::{Duration, Instant};

fn segment(i: u32) -> String {
    format!("0000000100000000{i:08X}")
}

/// Repository holding segments 1..=n of timeline 1; returns their contents.
fn archive(env: &Env, n: u32) -> Vec<Vec<u8>> {
    let wal = env.path("pg_wal");
    std::fs::create_dir_all(&wal).unwrap();
    (1..=n)
        .map(|i| {
            let data = noise(u64::from(i) + 100, 64 * 1024);
            let p = wal.join(segment(i));
            std::fs::write(&p, &data).unwrap();
            env.ok(&["wal-push", p.to_str().unwrap()]);
            data
        })
        .collect()
}

fn spooled(env: &Env) -> Vec<String> {
    let root = env.cache.join("wal-prefetch");
    let Ok(repos) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut names: Vec<String> = repos
        .flatten()
        .flat_map(|r| std::fs::read_dir(r.path()).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

fn wait_for_spool(env: &Env, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while spooled(env) != want {
        assert!(
            Instant::now() < deadline,
            "spool holds {:?}, expected {want:?}",
            spooled(env)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn wal_fetch_reads_ahead_and_the_next_fetch_takes_the_spooled_segment() {
    let env = Env::init();
    let data = archive(&env, 6);
    let dest = env.path("RECOVERYXLOG");
    let fetch = |i: u32, extra: &[&str]| {
        let mut args = vec!["wal-fetch", "-vv"];
        args.extend_from_slice(extra);
        let name = segment(i);
        args.push(&name);
        args.push(dest.to_str().unwrap());
        let (code, err) = code_and_stderr(&env.run(&args));
        assert_eq!(code, 0, "{err}");
        assert_eq!(std::fs::read(&dest).unwrap(), data[i as usize - 1]);
        err
    };
    let err = fetch(1, &["--prefetch", "3"]);
    assert!(err.contains("spooled=false"), "{err}");
    wait_for_spool(&env, &[segment(2), segment(3), segment(4)]);

    // Taken from the spool; the prefetcher then drops what recovery passed
    // and reads on to the end of the archive.
    let err = fetch(2, &["--prefetch", "3"]);
    assert!(err.contains("spooled=true"), "{err}");
    wait_for_spool(&env, &[segment(3), segment(4), segment(5)]);
    let err = fetch(3, &["--prefetch", "3"]);
    assert!(err.contains("spooled=true"), "{err}");
    wait_for_spool(&env, &[segment(4), segment(5), segment(6)]);

    // Off: nothing more is read ahead, and the spooled segment is not used.
    let err = fetch(5, &["--prefetch", "0"]);
    assert!(err.contains("spooled=false"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(spooled(&env), [segment(4), segment(5), segment(6)]);

    // A missing segment is still exit 1 (it ends recovery).
    let (code, err) =
        code_and_stderr(&env.run(&["wal-fetch", &segment(9), dest.to_str().unwrap()]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not in the archive"), "{err}");
}
