//! Plans (KDL): the example plans, damaged. A plan is written by its
//! operator, but `plan check` and `serve` read whatever file they are
//! given, and every problem must be a diagnostic, never a panic.

use crate::harness::fuzz;
use crate::mutate::inputs;
use cairn::plan::Plan;

const KDL: &[&[u8]] = &[
    b"{",
    b"}",
    b"\"",
    b";",
    b"\n",
    b"/*",
    b"*/",
    b"//",
    b"#true",
    b"#null",
    b"r#\"",
    b"\"#",
    b"-",
    b"=",
    b"(u8)",
    b"\\",
    b"0x",
    b"1e400",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"source \"s\" kind=\"files\" { path \"/\" }\n",
    b"schedule \"n\" ",
    b"every=\"1s\" ",
    b"cron=\"0 0 * * *\" ",
    b"keep-daily 99999999999 ",
    b"repository \"r\" { password-file \"p\" }\n",
];

fn plans() -> Vec<Vec<u8>> {
    [
        "examples/plan.kdl",
        "examples/demo.kdl",
        "deploy/debian/plan.kdl",
    ]
    .iter()
    .map(|p| {
        let path = format!("{}/{p}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    })
    .collect()
}

#[test]
fn plan_kdl() {
    let dir = std::env::temp_dir().join(format!("cairn-fuzz-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // The secrets the examples name, so parsing gets past their checks.
    for f in [
        "password",
        "smtp-password",
        "kafka.properties",
        "tokens",
        "p",
    ] {
        std::fs::write(dir.join(f), "secret\n").expect("secret");
    }
    let file = dir.join("plan.kdl");
    fuzz("plan_kdl", 300, inputs(plans(), KDL, 4096), |bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Err(d) = Plan::parse(&text, &file, &dir) {
            // Every diagnostic renders (spans inside the text).
            let _ = d.to_string();
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
