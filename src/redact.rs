//! Secrets out of messages: URLs (database, RabbitMQ) lose their passwords before they
//! reach an error or a log line.

/// `url` with the password of its `user:password@` part replaced by `***`; anything
/// that is not such a URL comes back as it is.
pub fn url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

/// `text` with every occurrence of the password in `secret_url` replaced by `***`
/// (for messages of libraries that may quote the URL, or parts of it).
pub fn in_text(text: &str, secret_url: &str) -> String {
    let password = secret_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty());
    let mut text = text.replace(secret_url, &url(secret_url));
    if let Some(password) = password {
        text = text.replace(password, "***");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_leave_urls_and_messages() {
        assert_eq!(
            url("postgres://pyti:s3cret@db:5432/farm?sslmode=require"),
            "postgres://pyti:***@db:5432/farm?sslmode=require"
        );
        assert_eq!(
            url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(url("postgres://db/farm"), "postgres://db/farm");
        assert_eq!(url("/var/lib/pyti.sqlite"), "/var/lib/pyti.sqlite");
        let said = in_text(
            "cannot reach postgres://u:hunter2@h/d: password hunter2 refused",
            "postgres://u:hunter2@h/d",
        );
        assert!(!said.contains("hunter2"), "{said}");
    }
}
