use super::*;

#[test]
fn parses_a_whole_call_with_pid_and_time() {
    let line = r#"6055  08:09:43.969291 openat(AT_FDCWD</tmp/stx/sub>, "rel.txt", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 6</tmp/stx/sub/rel.txt>"#;
    let Some(TraceLine::Call(call)) = parse_line(line) else {
        panic!("not a call");
    };
    assert_eq!(call.pid, 6055);
    assert_eq!(call.name, "openat");
    assert_eq!(
        call.args,
        vec![
            "AT_FDCWD</tmp/stx/sub>",
            "\"rel.txt\"",
            "O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC",
            "0666"
        ]
    );
    assert_eq!(call.result, "6</tmp/stx/sub/rel.txt>");
    assert!(call.succeeded());
    assert_eq!(call.result_name(), "ok");
}

#[test]
fn parses_a_call_without_pid_and_a_failed_result() {
    let line = r#"08:09:43.960977 connect(3<socket:[50715]>, {sa_family=AF_INET, sin_port=htons(9), sin_addr=inet_addr("127.0.0.1")}, 16) = -1 ECONNREFUSED (Connection refused)"#;
    let Some(TraceLine::Call(call)) = parse_line(line) else {
        panic!("not a call");
    };
    assert_eq!(call.pid, 0);
    assert_eq!(call.args.len(), 3);
    assert!(!call.succeeded());
    assert_eq!(call.result_name(), "ECONNREFUSED");
}

#[test]
fn strings_with_brackets_commas_quotes_and_equals_do_not_confuse_the_parser() {
    let line = r#"7 10:00:00.000001 execve("/bin/sh", ["sh", "-c", "echo \"a, b) = (c\" > /x"], 0x7ffc /* 3 vars */) = 0"#;
    let Some(TraceLine::Call(call)) = parse_line(line) else {
        panic!("not a call");
    };
    assert_eq!(call.result, "0");
    assert_eq!(call.args.len(), 3);
    assert_eq!(
        decode_array(&call.args[1]),
        vec!["sh", "-c", "echo \"a, b) = (c\" > /x"]
    );
}

#[test]
fn signals_exits_and_junk() {
    for line in [
        "6056  08:09:43.968374 +++ exited with 0 +++",
        "6055  08:09:43.968546 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED} ---",
        "6055  08:09:43.968546 +++ killed by SIGKILL +++",
    ] {
        assert_eq!(parse_line(line), Some(TraceLine::Other), "{line}");
    }
    for line in [
        "6055  08:09:43.968546 openat(AT_FDCWD, \"/x\"",
        "6055  08:09:43.968546 no call here",
        "6055  08:09:43.968546 open(\"/x\") 3",
        "",
    ] {
        assert_eq!(parse_line(line), None, "{line}");
    }
}

#[test]
fn joins_unfinished_and_resumed_halves_per_process() {
    let lines = [
        "6055  08:09:43.963563 vfork( <unfinished ...>",
        r#"6056  08:09:43.965580 execve("/usr/bin/sh", ["sh", "-c", "echo hi"], 0x7ffc058ec600 /* 35 vars */ <unfinished ...>"#,
        "6055  08:09:43.965853 <... vfork resumed>) = 6056",
        "6056  08:09:43.965935 <... execve resumed>) = 0",
        "6057  08:09:43.965935 wait4(-1,  <unfinished ...>",
        "6057  08:09:43.965935 <... wait4 resumed>[{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL) = 6056",
    ];
    let mut joiner = Joiner::default();
    let calls: Vec<Syscall> = lines.iter().filter_map(|l| joiner.push(l)).collect();
    assert_eq!(calls.len(), 3);
    assert_eq!(
        (calls[0].name.as_str(), calls[0].result.as_str()),
        ("vfork", "6056")
    );
    assert!(calls[0].args.is_empty());
    assert_eq!(calls[1].name, "execve");
    assert_eq!(calls[1].pid, 6056);
    assert_eq!(decode_array(&calls[1].args[1]), vec!["sh", "-c", "echo hi"]);
    assert_eq!(calls[2].args[0], "-1");
    assert_eq!(calls[2].result, "6056");
    assert_eq!(joiner.unparsed, 0);
}

#[test]
fn orphaned_halves_are_counted_not_fatal() {
    let mut joiner = Joiner::default();
    assert_eq!(
        joiner.push("9 10:00:00.000000 <... read resumed>\"x\", 1) = 1"),
        None
    );
    assert_eq!(
        joiner.push("9 10:00:00.000000 read(3,  <unfinished ...>"),
        None
    );
    assert_eq!(
        joiner.push("9 10:00:00.000000 <... write resumed>) = 1"),
        None
    );
    assert_eq!(joiner.unparsed, 2);
}

#[test]
fn decodes_every_escape_strace_prints() {
    assert_eq!(
        decode_string(r#""\312|\1\0\0\1\0\0\0\0\0\0\fpyti-fixture\7invalid\0\0\1\0\1""#).unwrap(),
        b"\xca|\x01\0\0\x01\0\0\0\0\0\0\x0cpyti-fixture\x07invalid\0\0\x01\0\x01".to_vec()
    );
    assert_eq!(
        decode_string(r#""a\tb\nc\r\v\f\\\"\x41\101\e""#).unwrap(),
        b"a\tb\nc\r\x0b\x0c\\\"AA\x1b".to_vec()
    );
    assert_eq!(decode_string(r#""abc"..."#).unwrap(), b"abc".to_vec());
    assert_eq!(decode_string("NULL"), None);
    assert_eq!(decode_string(r#""unterminated"#), None);
    assert_eq!(decode_string(r#""\400""#), None);
}

#[test]
fn splits_descriptor_paths() {
    assert_eq!(fd_path("AT_FDCWD</tmp/x>"), ("AT_FDCWD", Some("/tmp/x")));
    assert_eq!(fd_path("3</etc/hosts>"), ("3", Some("/etc/hosts")));
    assert_eq!(fd_path("3<socket:[50713]>"), ("3", Some("socket:[50713]")));
    assert_eq!(fd_path("AT_FDCWD"), ("AT_FDCWD", None));
}

#[test]
fn parses_socket_addresses() {
    assert_eq!(
        parse_sockaddr(
            r#"{sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.1")}"#
        ),
        Some(SocketAddress::Inet {
            family: "inet",
            address: "127.0.0.1".into(),
            port: 53
        })
    );
    assert_eq!(
        parse_sockaddr(
            r#"{sa_family=AF_INET6, sin6_port=htons(9), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}"#
        ),
        Some(SocketAddress::Inet {
            family: "inet6",
            address: "::1".into(),
            port: 9
        })
    );
    assert_eq!(
        parse_sockaddr(r#"{sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}"#),
        Some(SocketAddress::Unix("/var/run/nscd/socket".into()))
    );
    assert_eq!(
        parse_sockaddr(r#"{sa_family=AF_UNIX, sun_path=@"/tmp/.X11-unix/X0"}"#),
        Some(SocketAddress::Unix("@/tmp/.X11-unix/X0".into()))
    );
    assert_eq!(
        parse_sockaddr("{sa_family=AF_NETLINK, nl_pid=0, nl_groups=00000000}"),
        Some(SocketAddress::Other)
    );
    assert_eq!(parse_sockaddr("NULL"), None);
}

#[test]
fn finds_iov_payloads_in_sendmmsg() {
    let args = r#"[{msg_hdr={msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="\312|\1\0", iov_len=4}], msg_iovlen=1}, msg_len=4}, {msg_hdr={msg_iov=[{iov_base="0}", iov_len=2}]}}]"#;
    assert_eq!(
        iov_payloads(args),
        vec![b"\xca|\x01\0".to_vec(), b"0}".to_vec()]
    );
}
