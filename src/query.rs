//! Query-string parameters, percent-decoded, so that `%61bc` and `abc` are one key.

/// The decoded value of the first `name` parameter in a request path, if present.
pub fn param(path: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let q = path.iter().position(|b| *b == b'?').map(|i| &path[i + 1..])?;
    let q = q.split(|b| *b == b'#').next().unwrap_or(q);
    q.split(|b| *b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        (decode(k) == name).then(|| decode(v))
    })
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decoding with `+` as space; a malformed escape is kept literally.
fn decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::param;

    #[test]
    fn finds_and_decodes() {
        assert_eq!(param(b"/x?a=1&key=abc", b"key"), Some(b"abc".to_vec()));
        assert_eq!(param(b"/x?key=%61bc", b"key"), Some(b"abc".to_vec()));
        assert_eq!(param(b"/x?k%65y=a+b", b"key"), Some(b"a b".to_vec()));
        assert_eq!(param(b"/x?key", b"key"), Some(Vec::new()));
        assert_eq!(param(b"/x?key=1#frag", b"key"), Some(b"1".to_vec()));
    }

    #[test]
    fn absent_or_odd() {
        assert_eq!(param(b"/x", b"key"), None);
        assert_eq!(param(b"/x?other=1", b"key"), None);
        assert_eq!(param(b"/x?key=%", b"key"), Some(b"%".to_vec()));
        assert_eq!(param(b"/x?key=%4", b"key"), Some(b"%4".to_vec()));
        assert_eq!(param(b"/x?key=%zz", b"key"), Some(b"%zz".to_vec()));
        assert_eq!(param(b"?", b"key"), None);
    }
}
