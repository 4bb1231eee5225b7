//! Running a plan: `cairn snapshot --plan` backs up files, PostgreSQL and
//! Kafka into one snapshot; a failing source is recorded, not hidden.

use crate::common::*;
use cairn::testing::ScratchCluster;

#[test]
fn one_snapshot_holds_every_source_of_the_plan() {
    let env = Env::init();
    let files = env.path("etc");
    make_sample_tree(&files);
    let pg = ScratchCluster::start(&[]).unwrap();
    let url = pg.url();
    let broker = kafka::Broker::start();
    broker.create_topic("orders", 2, &[]);
    let p = broker.producer();
    for i in 0..20 {
        let r = kafka::TestRecord {
            key: Some(format!("k{i}").into_bytes()),
            value: Some(vec![i as u8; 100]),
            headers: vec![],
            timestamp: 1_700_000_000_000 + i,
        };
        broker.produce(&p, "orders", (i % 2) as i32, &r);
    }
    broker.flush(&p);
    let plan = env.write_plan(&format!(
        r#"
source "etc" kind="files" {{
    path "{files}"
}}
source "db" kind="postgres" {{
    url "{url}"
}}
source "queue" kind="kafka" {{
    brokers "{brokers}"
}}
source "version" kind="command" {{
    command "sh" "-c" "echo cairn-plan-test"
    file-name "version.txt"
}}
schedule "nightly" {{
    tag "nightly"
}}
"#,
        files = files.display(),
        brokers = broker.brokers()
    ));
    let plan = plan.to_str().unwrap();
    let out = env.run_plan(&["snapshot", "--plan", plan, "--json"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = snap["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["etc", "db", "queue", "version"]);
    assert!(snap["sources"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["ok"] == true));
    let list = env.json(&["snapshots"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["tags"][0], "nightly");
    assert_eq!(list[0]["complete"], true);

    // Each source restores from that one snapshot.
    let id = snap["id"].as_str().unwrap();
    let target = env.path("out");
    env.ok(&[
        "restore",
        id,
        "--source",
        "etc",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_same_tree(&files, &restored(&target, &files));
    env.ok(&[
        "restore",
        id,
        "--source",
        "version",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(target.join("version.txt")).unwrap(),
        "cairn-plan-test\n"
    );
    env.ok(&[
        "check",
        "--restore-test",
        "--snapshot",
        id,
        "--source",
        "db",
    ]);
    let dst = kafka::Broker::start();
    env.ok(&[
        "restore",
        id,
        "--source",
        "queue",
        "--to-brokers",
        &dst.brokers(),
    ]);
    assert_eq!(
        dst.read_all("orders", 2)
            .values()
            .map(Vec::len)
            .sum::<usize>(),
        20
    );

    // --source picks a subset; an unknown one is a usage error naming the choices.
    let out = env.run_plan(&["snapshot", "--plan", plan, "--source", "etc", "--json"]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 0, "{err}");
    let (code, err) =
        code_and_stderr(&env.run_plan(&["snapshot", "--plan", plan, "--source", "nope"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("etc, db, queue, version"), "{err}");
}

#[test]
fn a_failing_source_is_recorded_and_the_run_exits_3() {
    let env = Env::init();
    let files = env.path("etc");
    make_sample_tree(&files);
    let plan = env.write_plan(&format!(
        r#"
source "etc" kind="files" {{
    path "{files}"
}}
source "broken" kind="command" {{
    command "sh" "-c" "echo half; echo 'dump: server closed the connection' >&2; exit 2"
}}
"#,
        files = files.display()
    ));
    let out = env.run_plan(&["snapshot", "--plan", plan.to_str().unwrap()]);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("broken") && err.contains("failed"), "{err}");
    let list = env.json(&["snapshots"]);
    assert_eq!(
        list[0]["complete"], false,
        "a partial snapshot is never complete"
    );
    let statuses: Vec<(&str, &str)> = list[0]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, [("etc", "complete"), ("broken", "failed")]);
    let manifest: serde_json::Value =
        serde_json::from_str(&env.ok(&["cat", "snapshot", list[0]["id"].as_str().unwrap()]))
            .unwrap();
    assert!(manifest["sources"][1]["errors"][0]
        .as_str()
        .unwrap()
        .contains("server closed the connection"));

    // A broken plan never runs: exit 2 with the position of the problem.
    std::fs::write(
        &plan,
        "repository \"x\" {\n  password-file \"password\"\n}\nsource \"a\" kind=\"tape\"\n",
    )
    .unwrap();
    let (code, err) =
        code_and_stderr(&env.run_plan(&["snapshot", "--plan", plan.to_str().unwrap()]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plan.kdl:4:"), "{err}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
}
