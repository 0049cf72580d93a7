//! Reading `strace -f -tt -y -s 256` output into whole system calls.
//!
//! strace's text is the only record of what a package did, and a package controls much
//! of it (file names, argv, payloads), so this parser never trusts a line's shape: it
//! scans quoted strings with their escapes, matches brackets, and gives up on a line
//! (counted, not fatal) rather than guess. With `-f`, calls of different processes
//! interleave as `<unfinished ...>` / `<... resumed>` pairs, which [`Joiner`] stitches.

use std::collections::HashMap;

/// A complete system call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syscall {
    /// The calling process (thread) id.
    pub pid: u32,
    /// The call's name, e.g. `openat`.
    pub name: String,
    /// Its arguments as strace printed them, split at top-level commas.
    pub args: Vec<String>,
    /// Everything after ` = `, e.g. `3</etc/hosts>` or `-1 ENOENT (No such file or directory)`.
    pub result: String,
}

impl Syscall {
    /// True when the call returned a non-negative value (or `?`, e.g. a successful execve
    /// whose process image is gone).
    pub fn succeeded(&self) -> bool {
        !self.result.starts_with('-')
    }

    /// The errno name of a failed call (`ENOENT`), or `ok`.
    pub fn result_name(&self) -> String {
        if self.succeeded() {
            return "ok".to_string();
        }
        self.result
            .split_whitespace()
            .nth(1)
            .unwrap_or("error")
            .to_string()
    }
}

/// One line of the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceLine {
    /// A call printed whole.
    Call(Syscall),
    /// The first half of a call another process interrupted: `name(args <unfinished ...>`.
    Unfinished {
        /// The calling process.
        pid: u32,
        /// The call's name.
        name: String,
        /// The text between `(` and ` <unfinished ...>`.
        head: String,
    },
    /// The second half: `<... name resumed>rest`.
    Resumed {
        /// The calling process.
        pid: u32,
        /// The call's name.
        name: String,
        /// The text after `resumed>`.
        tail: String,
    },
    /// Signals, exits and other lines that are not calls.
    Other,
}

/// Parses one line; `None` for a line that looks like a call but does not parse.
pub fn parse_line(line: &str) -> Option<TraceLine> {
    let (pid, body) = split_prefix(line)?;
    if body.starts_with("---") || body.starts_with("+++") || body.is_empty() {
        return Some(TraceLine::Other);
    }
    if let Some(rest) = body.strip_prefix("<... ") {
        let (name, tail) = rest.split_once(" resumed>")?;
        return Some(TraceLine::Resumed {
            pid,
            name: name.to_string(),
            tail: tail.to_string(),
        });
    }
    if let Some(head) = body.strip_suffix("<unfinished ...>") {
        let open = head.find('(')?;
        return Some(TraceLine::Unfinished {
            pid,
            name: head[..open].to_string(),
            head: head[open + 1..].trim_end().to_string(),
        });
    }
    parse_call(pid, body).map(TraceLine::Call)
}

/// Splits `PID HH:MM:SS.ffffff body` (the pid is absent when only one process was traced).
fn split_prefix(line: &str) -> Option<(u32, &str)> {
    let line = line.trim_end_matches(['\n', '\r']);
    let mut rest = line.trim_start();
    let mut pid = 0;
    if let Some((first, after)) = rest.split_once(' ') {
        if let Ok(number) = first.parse::<u32>() {
            pid = number;
            rest = after.trim_start();
        }
    }
    if let Some((first, after)) = rest.split_once(' ') {
        if first.len() >= 8 && first.as_bytes()[2] == b':' && first.as_bytes()[5] == b':' {
            rest = after;
        }
    }
    if rest.is_empty() {
        return None;
    }
    Some((pid, rest))
}

/// Parses `name(args) = result`.
pub fn parse_call(pid: u32, body: &str) -> Option<Syscall> {
    let open = body.find('(')?;
    let name = &body[..open];
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    let close = matching_close(body, open)?;
    let after = body[close + 1..].trim_start();
    let result = after.strip_prefix('=')?.trim().to_string();
    Some(Syscall {
        pid,
        name: name.to_string(),
        args: split_args(&body[open + 1..close]),
        result,
    })
}

/// Index of the bracket closing the one at `open`, skipping quoted strings.
fn matching_close(text: &str, open: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut index = open;
    while index < bytes.len() {
        match bytes[index] {
            b'"' => index = skip_string(bytes, index)?,
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(index);
                }
            }
            _ => {}
        }
        index += 1;
    }
    None
}

/// Index of the quote closing the string that opens at `start`.
fn skip_string(bytes: &[u8], start: usize) -> Option<usize> {
    let mut index = start + 1;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' => index += 2,
            b'"' => return Some(index),
            _ => index += 1,
        }
    }
    None
}

/// Splits an argument list at top-level commas (not inside strings or brackets) and
/// trims each part. An unbalanced list yields what could be split.
pub fn split_args(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'"' => match skip_string(bytes, index) {
                Some(end) => index = end,
                None => break,
            },
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                parts.push(text[start..index].trim().to_string());
                start = index + 1;
            }
            _ => {}
        }
        index += 1;
    }
    let last = text[start..].trim();
    if !last.is_empty() || !parts.is_empty() {
        parts.push(last.to_string());
    }
    parts
}

/// Decodes a quoted strace string (`"a\tb\303\251"`, maybe followed by `...` when cut
/// at `-s`) into its bytes; `None` when `arg` does not start with a quoted string.
pub fn decode_string(arg: &str) -> Option<Vec<u8>> {
    let bytes = arg.trim().as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut out = Vec::new();
    let mut index = 1;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'"' {
            return Some(out);
        }
        if byte != b'\\' {
            out.push(byte);
            index += 1;
            continue;
        }
        let escape = *bytes.get(index + 1)?;
        index += 2;
        match escape {
            b'x' => {
                let digits = bytes.get(index..index + 2)?;
                out.push(u8::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()?);
                index += 2;
            }
            b'0'..=b'7' => {
                let mut value = u32::from(escape - b'0');
                let mut taken = 1;
                while taken < 3 {
                    match bytes.get(index) {
                        Some(&digit @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(digit - b'0');
                            index += 1;
                            taken += 1;
                        }
                        _ => break,
                    }
                }
                out.push(u8::try_from(value).ok()?);
            }
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'v' => out.push(0x0b),
            b'f' => out.push(0x0c),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'e' => out.push(0x1b),
            other => out.push(other),
        }
    }
    None
}

/// A quoted string decoded as (lossy) UTF-8.
pub fn decode_text(arg: &str) -> Option<String> {
    decode_string(arg).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Splits a `-y` file-descriptor argument `3</path>` or `AT_FDCWD</cwd>` into the
/// descriptor text and the path strace resolved for it.
pub fn fd_path(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('<') {
        Some((fd, rest)) if rest.ends_with('>') => (fd, Some(&rest[..rest.len() - 1])),
        _ => (arg, None),
    }
}

/// The elements of a printed array `["sh", "-c", "x"]` decoded as text; strace's
/// `...` for a cut array is dropped.
pub fn decode_array(arg: &str) -> Vec<String> {
    let inner = arg
        .trim()
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or("");
    split_args(inner)
        .iter()
        .filter_map(|item| decode_text(item))
        .collect()
}

/// A socket address as strace prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAddress {
    /// IPv4 or IPv6 with address and port.
    Inet {
        /// `inet` or `inet6`.
        family: &'static str,
        /// The address as text.
        address: String,
        /// The port.
        port: u16,
    },
    /// A Unix socket path (abstract names start with `@`).
    Unix(String),
    /// Netlink and the rest: not network traffic.
    Other,
}

/// Parses `{sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("1.2.3.4")}` and its
/// IPv6 and Unix forms; `None` for `NULL` or text without `sa_family`.
pub fn parse_sockaddr(text: &str) -> Option<SocketAddress> {
    let family_at = text.find("sa_family=")?;
    let family = text[family_at + "sa_family=".len()..]
        .split([',', '}'])
        .next()?
        .trim();
    match family {
        "AF_INET" => Some(SocketAddress::Inet {
            family: "inet",
            address: quoted_after(text, "inet_addr(")?,
            port: port_after(text, "sin_port=htons(")?,
        }),
        "AF_INET6" => {
            let at = text.find("inet_pton(AF_INET6,")?;
            Some(SocketAddress::Inet {
                family: "inet6",
                address: quoted_after(&text[at..], "inet_pton(AF_INET6, ")?,
                port: port_after(text, "sin6_port=htons(")?,
            })
        }
        "AF_UNIX" | "AF_LOCAL" => {
            let at = text.find("sun_path=")?;
            let path = &text[at + "sun_path=".len()..];
            let abstract_name = path.starts_with('@');
            let name = decode_text(path.trim_start_matches('@')).unwrap_or_default();
            Some(SocketAddress::Unix(if abstract_name {
                format!("@{name}")
            } else {
                name
            }))
        }
        _ => Some(SocketAddress::Other),
    }
}

fn quoted_after(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    decode_text(&text[at..])
}

fn port_after(text: &str, marker: &str) -> Option<u16> {
    let at = text.find(marker)? + marker.len();
    text[at..].split(')').next()?.trim().parse().ok()
}

/// Every `iov_base="..."` payload in a sendmsg/sendmmsg argument, decoded.
pub fn iov_payloads(text: &str) -> Vec<Vec<u8>> {
    text.match_indices("iov_base=")
        .filter_map(|(at, marker)| decode_string(&text[at + marker.len()..]))
        .collect()
}

/// Joins the halves of interrupted calls, process by process.
#[derive(Debug, Default)]
pub struct Joiner {
    pending: HashMap<u32, (String, String)>,
    /// Lines that looked like calls but did not parse (including orphaned halves).
    pub unparsed: u64,
}

impl Joiner {
    /// Feeds one line; returns a call once it is whole.
    pub fn push(&mut self, line: &str) -> Option<Syscall> {
        match parse_line(line) {
            Some(TraceLine::Call(call)) => Some(call),
            Some(TraceLine::Unfinished { pid, name, head }) => {
                if self.pending.insert(pid, (name, head)).is_some() {
                    self.unparsed += 1;
                }
                None
            }
            Some(TraceLine::Resumed { pid, name, tail }) => match self.pending.remove(&pid) {
                Some((pending_name, head)) if pending_name == name => {
                    let separator = if head.is_empty() || tail.starts_with(')') {
                        ""
                    } else {
                        " "
                    };
                    let joined = format!("{name}({head}{separator}{tail}");
                    let call = parse_call(pid, &joined);
                    if call.is_none() {
                        self.unparsed += 1;
                    }
                    call
                }
                _ => {
                    self.unparsed += 1;
                    None
                }
            },
            Some(TraceLine::Other) => None,
            None => {
                if !line.trim().is_empty() {
                    self.unparsed += 1;
                }
                None
            }
        }
    }
}

#[cfg(test)]
#[path = "strace_tests.rs"]
mod tests;
