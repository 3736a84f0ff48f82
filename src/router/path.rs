//! Path normalization before routing (SPEC "Path rules"): percent-decoding of
//! unreserved characters, `.`/`..` resolved, duplicate slashes merged. The
//! normalized form is what routes match and what is forwarded.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2F` or `%5C`, or a raw `\`: backends disagree on what they mean.
    EncodedSlash,
    /// A NUL byte, raw or `%00`.
    Nul,
    /// A `..` that would climb above `/`.
    ClimbsAboveRoot,
    /// Not an origin-form path, or a broken `%` escape.
    Malformed,
}

impl PathError {
    pub fn describe(self) -> &'static str {
        match self {
            PathError::EncodedSlash => "the path contains an encoded slash or backslash",
            PathError::Nul => "the path contains a NUL byte",
            PathError::ClimbsAboveRoot => "the path climbs above the root with `..`",
            PathError::Malformed => "the path is malformed",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes an origin-form path (no query). Borrows when nothing changes,
/// which is the common case, so the hot path does not allocate.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::Malformed);
    }
    let mut needs_work = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' => needs_work = true,
            b'\\' => return Err(PathError::EncodedSlash),
            0 => return Err(PathError::Nul),
            b'/' => {
                if matches!(bytes.get(i + 1), Some(b'/') | Some(b'.')) {
                    needs_work = true;
                }
            }
            _ => {}
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(raw));
    }

    // 1. Decode unreserved escapes; keep (upper-cased) the others.
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) else {
                return Err(PathError::Malformed);
            };
            let v = h << 4 | l;
            match v {
                b'/' | b'\\' => return Err(PathError::EncodedSlash),
                0 => return Err(PathError::Nul),
                v if is_unreserved(v) => decoded.push(v as char),
                v => {
                    decoded.push('%');
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(v >> 4)]));
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(v & 15)]));
                }
            }
            i += 3;
        } else {
            // Only ASCII reaches here: `http::Uri` refuses raw non-ASCII bytes.
            decoded.push(b as char);
            i += 1;
        }
    }

    // 2. Resolve dot segments and merge slashes.
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded[1..].split('/') {
        trailing_slash = false;
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::ClimbsAboveRoot);
                }
                trailing_slash = true;
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if trailing_slash || out.is_empty() {
        result.push('/');
    }
    Ok(Cow::Owned(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalizes() {
        let n = |p| normalize(p).map(|c| c.into_owned());
        assert_eq!(n("/a/b").unwrap(), "/a/b");
        assert!(matches!(normalize("/a/b"), Ok(Cow::Borrowed(_))));
        assert_eq!(n("//a///b/").unwrap(), "/a/b/");
        assert_eq!(n("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/%61%7e%2d").unwrap(), "/a~-");
        assert_eq!(n("/a%2e%2e/x").unwrap(), "/a../x");
        assert_eq!(n("/a/%2E%2E/b").unwrap(), "/b");
        assert_eq!(n("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(n("/a;b=c").unwrap(), "/a;b=c");
        assert_eq!(n("/.").unwrap(), "/");
        assert_eq!(n("/").unwrap(), "/");
    }

    #[test]
    fn rejects() {
        assert_eq!(normalize("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%5cb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a\\b"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%00"), Err(PathError::Nul));
        assert_eq!(normalize("/../etc/passwd"), Err(PathError::ClimbsAboveRoot));
        assert_eq!(normalize("/a/../../b"), Err(PathError::ClimbsAboveRoot));
        assert_eq!(normalize("/%2e%2e/x"), Err(PathError::ClimbsAboveRoot));
        assert_eq!(normalize("/a%zz"), Err(PathError::Malformed));
        assert_eq!(normalize("/a%4"), Err(PathError::Malformed));
        assert_eq!(normalize("a/b"), Err(PathError::Malformed));
    }

    proptest! {
        #[test]
        fn normalized_paths_are_stable_and_clean(raw in "/[a-zA-Z0-9._~%/;-]{0,40}") {
            if let Ok(once) = normalize(&raw) {
                let once = once.into_owned();
                // Idempotent: normalizing again changes nothing.
                prop_assert_eq!(normalize(&once).unwrap().into_owned(), once.clone());
                prop_assert!(once.starts_with('/'));
                prop_assert!(!once.contains("//"));
                prop_assert!(!once.split('/').any(|s| s == "." || s == ".."));
                let lower = once.to_ascii_lowercase();
                prop_assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%00"));
            }
        }
    }
}
