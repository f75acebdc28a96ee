//! Validation of request bodies into increments: form and query strings, JSON objects and
//! arrays, NDJSON lines. Pure functions; every failure is a 400 with a precise code.
//!
//! Values are whole numbers in the i64 range, written as decimal digits, optionally with a
//! fraction or an exponent that leave the number whole (`7`, `7.0`, `7e0`; never a string);
//! keys are non-empty UTF-8 of at most [`MAX_KEY_BYTES`] bytes.

use crate::contract::Code;
use serde::Deserialize;
use serde_json::value::RawValue;
use tally_http::ApiError;
use tally_pipeline::record::MAX_KEY_BYTES;

/// One validated increment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Increment {
    pub key: String,
    pub value: i64,
}

pub fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request(
            Code::EmptyKey,
            "key must not be empty",
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(
            Code::KeyTooLong,
            format!(
                "key is {} bytes; at most {MAX_KEY_BYTES} are allowed",
                key.len()
            ),
        ));
    }
    Ok(())
}

/// Parses an integer as written in a form, a query or JSON: decimal digits with an optional
/// leading '-', and optionally a fraction and an exponent (JSON's number syntax) as long as the
/// number they write is a whole number (`330.0`, `1e2`, `-2.50e1`): JSON Schema's `integer`,
/// which generated clients and encoders of floating-point numbers produce. The value is exact:
/// it is computed from the digits, never through a float.
pub fn parse_value(text: &str) -> Result<i64, ApiError> {
    let not_integer = || {
        ApiError::bad_request(
            Code::ValueNotInteger,
            format!("value {text:?} is not an integer (digits with an optional leading '-')"),
        )
    };
    let out_of_range = || {
        ApiError::bad_request(
            Code::ValueOutOfRange,
            format!("value {text} is outside the signed 64-bit range"),
        )
    };
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (number, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
        return Err(not_integer());
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if !all_digits(digits) {
                return Err(not_integer());
            }
            // Beyond this every non-zero value is out of range or not whole.
            let magnitude = digits.trim_start_matches('0');
            let magnitude: i64 = if magnitude.len() > 6 {
                1_000_000
            } else {
                magnitude.parse().unwrap_or(0)
            };
            if e.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    // The digits of int and fraction, times ten to the power `scale`.
    let frac = frac.unwrap_or("");
    let mantissa = format!("{int}{frac}");
    let mantissa = mantissa.trim_start_matches('0');
    let mut scale = exponent - frac.len() as i64;
    let mut mantissa = mantissa;
    while scale < 0 && mantissa.ends_with('0') {
        mantissa = &mantissa[..mantissa.len() - 1];
        scale += 1;
    }
    if mantissa.is_empty() {
        return Ok(0);
    }
    if scale < 0 {
        return Err(not_integer());
    }
    if mantissa.len() as i64 + scale > 20 {
        return Err(out_of_range());
    }
    let magnitude =
        mantissa.parse::<i128>().map_err(|_| out_of_range())? * 10i128.pow(scale as u32);
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).map_err(|_| out_of_range())
}

/// Parses `key=K&value=V` from a query string and/or a form body. Percent-decoding is strict:
/// bytes that do not form UTF-8 are an error, not replaced.
pub fn parse_form(parts: &[&[u8]]) -> Result<Increment, ApiError> {
    let mut key = None;
    let mut value = None;
    for part in parts {
        for pair in part.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (name, raw) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let name = decode_component(name)?;
            let slot = match name.as_str() {
                "key" => &mut key,
                "value" => &mut value,
                other => {
                    return Err(ApiError::bad_request(
                        Code::UnknownParameter,
                        format!("unknown parameter {other:?}; expected key and value"),
                    ))
                }
            };
            if slot.replace(decode_component(raw)?).is_some() {
                return Err(ApiError::bad_request(
                    Code::DuplicateParameter,
                    format!("parameter {name:?} is given more than once"),
                ));
            }
        }
    }
    let key =
        key.ok_or_else(|| ApiError::bad_request(Code::MissingKey, "parameter key is required"))?;
    let value = value
        .ok_or_else(|| ApiError::bad_request(Code::MissingValue, "parameter value is required"))?;
    validate_key(&key)?;
    Ok(Increment {
        value: parse_value(&value)?,
        key,
    })
}

fn decode_component(raw: &[u8]) -> Result<String, ApiError> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&plus_as_space).collect();
    String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request(Code::InvalidUtf8, "form data is not valid utf-8"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonIncrement<'a> {
    key: String,
    #[serde(borrow)]
    value: &'a RawValue,
}

impl JsonIncrement<'_> {
    fn validate(self) -> Result<Increment, ApiError> {
        validate_key(&self.key)?;
        let raw = self.value.get();
        if raw.starts_with('"') {
            return Err(ApiError::bad_request(
                Code::ValueNotInteger,
                "value must be a JSON integer, not a string",
            ));
        }
        Ok(Increment {
            value: parse_value(raw)?,
            key: self.key,
        })
    }
}

fn invalid_json(e: serde_json::Error, at: Option<usize>) -> ApiError {
    let at = at.map(|l| format!("line {l}: ")).unwrap_or_default();
    ApiError::bad_request(Code::InvalidJson, format!("{at}{e}"))
}

/// What a JSON body held: one increment, or a batch (array).
pub enum JsonBody {
    One(Increment),
    Many(Vec<Increment>),
}

/// Parses an `application/json` body: an object, or an array of objects.
pub fn parse_json(body: &[u8], max_batch: usize) -> Result<JsonBody, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let items: Vec<JsonIncrement> =
            serde_json::from_slice(body).map_err(|e| invalid_json(e, None))?;
        check_batch_len(items.len(), max_batch)?;
        let incs = items
            .into_iter()
            .enumerate()
            .map(|(i, it)| it.validate().map_err(|e| at_item(e, "item", i)))
            .collect::<Result<_, _>>()?;
        Ok(JsonBody::Many(incs))
    } else {
        let item: JsonIncrement =
            serde_json::from_slice(body).map_err(|e| invalid_json(e, None))?;
        Ok(JsonBody::One(item.validate()?))
    }
}

/// Parses an `application/x-ndjson` body: one object per line; blank lines are skipped.
pub fn parse_ndjson(body: &[u8], max_batch: usize) -> Result<Vec<Increment>, ApiError> {
    let mut out = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        check_batch_len(out.len() + 1, max_batch)?;
        let item: JsonIncrement =
            serde_json::from_slice(line).map_err(|e| invalid_json(e, Some(i + 1)))?;
        out.push(item.validate().map_err(|e| at_item(e, "line", i + 1))?);
    }
    if out.is_empty() {
        return Err(ApiError::bad_request(
            Code::EmptyBatch,
            "the body holds no increments",
        ));
    }
    Ok(out)
}

fn check_batch_len(len: usize, max: usize) -> Result<(), ApiError> {
    if len == 0 {
        return Err(ApiError::bad_request(
            Code::EmptyBatch,
            "the batch holds no increments",
        ));
    }
    if len > max {
        return Err(ApiError::bad_request(
            Code::BatchTooLong,
            format!("a batch may hold at most {max} increments"),
        ));
    }
    Ok(())
}

fn at_item(mut e: ApiError, what: &str, n: usize) -> ApiError {
    e.message = format!("{what} {n}: {}", e.message);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code<T>(r: Result<T, ApiError>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(e) => e.code,
        }
    }

    #[test]
    fn values() {
        assert_eq!(parse_value("42").unwrap(), 42);
        assert_eq!(parse_value("-9223372036854775808").unwrap(), i64::MIN);
        assert_eq!(
            code(parse_value("9223372036854775808")),
            "value_out_of_range"
        );
        for bad in [
            "", "-", "+1", " 1", "0x10", "abc", "1_000", "1.5", "1.", ".5", "1e", "1e+", "1.0.0",
            "15e-1", "1e-1", "--1", "1e1.5",
        ] {
            assert_eq!(code(parse_value(bad)), "value_not_integer", "{bad}");
        }
        // Whole numbers with a fraction or an exponent, exactly.
        for (text, want) in [
            ("330.0", 330),
            ("-964.000", -964),
            ("1e3", 1000),
            ("1E+3", 1000),
            ("2.50e1", 25),
            ("1000e-3", 1),
            ("-0.0", 0),
            ("0e99999999999", 0),
            ("9223372036854775807.0", i64::MAX),
            ("-9.223372036854775808e18", i64::MIN),
            ("007", 7),
        ] {
            assert_eq!(parse_value(text).unwrap(), want, "{text}");
        }
        for big in ["9.223372036854775808e18", "1e19", "1e99999999999", "-1e20"] {
            assert_eq!(code(parse_value(big)), "value_out_of_range", "{big}");
        }
    }

    #[test]
    fn forms() {
        let inc = parse_form(&[b"key=a+b%2Fc&value=-3"]).unwrap();
        assert_eq!(
            inc,
            Increment {
                key: "a b/c".into(),
                value: -3
            }
        );
        let inc = parse_form(&[b"key=q", b"value=7"]).unwrap();
        assert_eq!(inc.value, 7);
        assert_eq!(code(parse_form(&[b"key=%FF&value=1"])), "invalid_utf8");
        assert_eq!(code(parse_form(&[b"key=&value=1"])), "empty_key");
        assert_eq!(code(parse_form(&[b"value=1"])), "missing_key");
        assert_eq!(code(parse_form(&[b"key=a"])), "missing_value");
        assert_eq!(
            code(parse_form(&[b"key=a&value=1", b"value=2"])),
            "duplicate_parameter"
        );
        assert_eq!(
            code(parse_form(&[b"key=a&value=1&x=2"])),
            "unknown_parameter"
        );
        assert_eq!(code(parse_form(&[b"key=a&value=1.5"])), "value_not_integer");
        let long = format!("key={}&value=1", "k".repeat(257));
        assert_eq!(code(parse_form(&[long.as_bytes()])), "key_too_long");
    }

    #[test]
    fn json_bodies() {
        match parse_json(br#"{"key":"k","value":5}"#, 10).unwrap() {
            JsonBody::One(i) => assert_eq!(
                i,
                Increment {
                    key: "k".into(),
                    value: 5
                }
            ),
            JsonBody::Many(_) => panic!("one expected"),
        }
        match parse_json(br#" [{"key":"a","value":1},{"key":"b","value":-2}]"#, 10).unwrap() {
            JsonBody::Many(v) => assert_eq!(v.len(), 2),
            JsonBody::One(_) => panic!("batch expected"),
        }
        assert_eq!(
            code(parse_json(br#"{"key":"k","value":1.5}"#, 10)),
            "value_not_integer"
        );
        match parse_json(br#"{"key":"k","value":1e2}"#, 10).unwrap() {
            JsonBody::One(i) => assert_eq!(i.value, 100),
            JsonBody::Many(_) => panic!("one expected"),
        }
        assert_eq!(
            code(parse_json(br#"{"key":"k","value":"5"}"#, 10)),
            "value_not_integer"
        );
        assert_eq!(
            code(parse_json(
                br#"{"key":"k","value":99999999999999999999}"#,
                10
            )),
            "value_out_of_range"
        );
        assert_eq!(
            code(parse_json(br#"{"key":"","value":1}"#, 10)),
            "empty_key"
        );
        assert_eq!(code(parse_json(br#"{"key":"k"}"#, 10)), "invalid_json");
        assert_eq!(
            code(parse_json(br#"{"key":"k","value":1,"x":1}"#, 10)),
            "invalid_json"
        );
        assert_eq!(
            code(parse_json(b"{\"key\":\"\xff\",\"value\":1}", 10)),
            "invalid_json"
        );
        assert_eq!(code(parse_json(b"{", 10)), "invalid_json");
        assert_eq!(code(parse_json(b"[]", 10)), "empty_batch");
        assert_eq!(
            code(parse_json(
                br#"[{"key":"a","value":1},{"key":"a","value":1}]"#,
                1
            )),
            "batch_too_long"
        );
        // All-or-nothing: one bad item fails the batch.
        let e = parse_json(br#"[{"key":"a","value":1},{"key":"b","value":0.5}]"#, 10)
            .err()
            .unwrap();
        assert_eq!(e.code, "value_not_integer");
        assert!(e.message.starts_with("item 1:"), "{}", e.message);
    }

    #[test]
    fn ndjson_bodies() {
        let v = parse_ndjson(
            b"{\"key\":\"a\",\"value\":1}\r\n\n{\"key\":\"b\",\"value\":2}\n",
            10,
        )
        .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(code(parse_ndjson(b"\n\n", 10)), "empty_batch");
        let e = parse_ndjson(
            b"{\"key\":\"a\",\"value\":1}\n{\"key\":\"\xfe\",\"value\":1}",
            10,
        )
        .err()
        .unwrap();
        assert_eq!(e.code, "invalid_json");
        assert!(e.message.starts_with("line 2:"), "{}", e.message);
        assert_eq!(
            code(parse_ndjson(
                b"{\"key\":\"a\",\"value\":1}\n{\"key\":\"a\",\"value\":1}",
                1
            )),
            "batch_too_long"
        );
    }
}
