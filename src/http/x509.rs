//! The few facts start-up reads from a certificate that rustls does not expose: its issuer,
//! subject and validity dates.
//!
//! rustls checks names (`verify_server_name`) but keeps the validity to itself, and a full
//! X.509 parser (x509-parser and its asn1 crates) would be the largest dependency of the
//! binary for two dates. So this walks the DER of the first fields of `TBSCertificate`
//! (RFC 5280, 4.1) and nothing more; anything unexpected gives `None`, never a panic.

/// What start-up needs to know of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts<'a> {
    /// The DER contents of the issuer `Name` (without its SEQUENCE header).
    pub issuer: &'a [u8],
    /// The DER contents of the subject `Name` (without its SEQUENCE header).
    pub subject: &'a [u8],
    /// Seconds since 1970-01-01 UTC.
    pub not_before: i64,
    /// Seconds since 1970-01-01 UTC.
    pub not_after: i64,
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const EXPLICIT_0: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// Reads issuer, subject and validity from a DER certificate; `None` when it is not one.
pub fn cert_facts(der: &[u8]) -> Option<CertFacts<'_>> {
    let cert = expect(der, SEQUENCE)?.0;
    let tbs = expect(cert, SEQUENCE)?.0;
    let (mut tag, _, mut rest) = element(tbs)?;
    // The version is optional (absent means v1) and comes before the serial number.
    if tag == EXPLICIT_0 {
        (tag, _, rest) = element(rest)?;
    }
    if tag != INTEGER {
        return None;
    }
    let (_signature, rest) = expect(rest, SEQUENCE)?;
    let (issuer, rest) = expect(rest, SEQUENCE)?;
    let (validity, rest) = expect(rest, SEQUENCE)?;
    let (subject, _) = expect(rest, SEQUENCE)?;
    let (tag, not_before, rest) = element(validity)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = element(rest)?;
    let not_after = time(tag, not_after)?;
    Some(CertFacts {
        issuer,
        subject,
        not_before,
        not_after,
    })
}

/// One DER element: its tag, its contents and the bytes after it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        // Long form: the low bits count the length bytes that follow. Four are plenty for
        // a certificate; more (or zero) is not something we read.
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |len, &b| len << 8 | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

/// The contents of the next element when it has tag `want`, and the bytes after it.
fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    match element(input)? {
        (tag, contents, rest) if tag == want => Some((contents, rest)),
        _ => None,
    }
}

/// Seconds since 1970-01-01 UTC of an X.509 `Time`: `UTCTime` `YYMMDDHHMMSSZ` (years 1950
/// to 2049, RFC 5280 4.1.2.5.1) or `GeneralizedTime` `YYYYMMDDHHMMSSZ`.
fn time(tag: u8, contents: &[u8]) -> Option<i64> {
    let digits = contents.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |s: &[u8]| s.iter().fold(0i64, |n, &b| n * 10 + i64::from(b - b'0'));
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy = num(&digits[..2]);
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (num(&digits[..4]), &digits[4..]),
        _ => return None,
    };
    let (month, day) = (num(&rest[0..2]), num(&rest[2..4]));
    let (hour, minute, second) = (num(&rest[4..6]), num(&rest[6..8]), num(&rest[8..10]));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = crate::logging::days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_both_forms() {
        assert_eq!(time(UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(time(UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(time(UTC_TIME, b"500101000000Z"), Some(-631_152_000));
        assert_eq!(
            time(GENERALIZED_TIME, b"20500101000000Z"),
            Some(2_524_608_000)
        );
        for bad in [
            &b"700101000000"[..],
            b"7001010000Z",
            b"701301000000Z",
            b"70010100000+Z",
            b"",
        ] {
            assert_eq!(time(UTC_TIME, bad), None, "{bad:?}");
        }
        assert_eq!(time(GENERALIZED_TIME, b"700101000000Z"), None);
    }

    #[test]
    fn lengths_in_short_and_long_form() {
        assert_eq!(
            element(&[0x04, 0x01, 0xaa, 0xbb]),
            Some((4, &[0xaa][..], &[0xbb][..]))
        );
        let mut long = vec![0x04, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(7, 256));
        assert_eq!(element(&long).map(|e| e.1.len()), Some(256));
        // Truncated, zero length bytes, too many length bytes.
        assert_eq!(element(&[0x04, 0x02, 0xaa]), None);
        assert_eq!(element(&[0x04, 0x80]), None);
        assert_eq!(element(&[0x04, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(element(&[0x04]), None);
    }

    #[test]
    fn reads_an_rcgen_certificate_and_refuses_garbage() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 11, 20);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let facts = cert_facts(cert.der()).unwrap();
        assert_eq!(facts.not_before, 1_795_132_800);
        assert_eq!(facts.not_after, params.not_after.unix_timestamp());
        assert_eq!(facts.issuer, facts.subject);
        // Every truncation is refused, none panics.
        for n in 0..cert.der().len() {
            assert_eq!(cert_facts(&cert.der()[..n]), None, "{n}");
        }
        assert_eq!(cert_facts(b"not der"), None);
    }
}
