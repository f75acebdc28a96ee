//! Property-based fuzzing of ingest's request parsers: arbitrary bytes never panic and never
//! yield an increment that breaks the rules, and well-formed increments round-trip exactly in
//! every body format.

use ingest::parse::{parse_form, parse_json, parse_ndjson, parse_value, JsonBody};
use proptest::prelude::*;
use tally_pipeline::record::MAX_KEY_BYTES;

fn check_rules(key: &str) {
    assert!(
        !key.is_empty() && key.len() <= MAX_KEY_BYTES,
        "accepted key breaks the rules: {key:?}"
    );
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(inc) = parse_form(&[&bytes]) {
            check_rules(&inc.key);
        }
        match parse_json(&bytes, 50) {
            Ok(JsonBody::One(inc)) => check_rules(&inc.key),
            Ok(JsonBody::Many(v)) => v.iter().for_each(|i| check_rules(&i.key)),
            Err(e) => prop_assert_eq!(e.status.as_u16(), 400),
        }
        if let Ok(v) = parse_ndjson(&bytes, 50) {
            prop_assert!(!v.is_empty() && v.len() <= 50);
            v.iter().for_each(|i| check_rules(&i.key));
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = parse_value(text);
        }
    }

    #[test]
    fn json_shaped_noise_never_panics(
        key in prop_oneof![any::<String>(), Just(String::new()), "[a-z]{250,260}"],
        value in prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| v.to_string()),
            "[0-9]{18,30}", "-[0-9]{18,30}", Just("\"5\"".to_owned()), Just("null".to_owned()),
            Just("1e3".to_owned()), Just("true".to_owned())
        ],
    ) {
        let body = format!("{{\"key\":{},\"value\":{value}}}", serde_json::to_string(&key).unwrap());
        match parse_json(body.as_bytes(), 10) {
            Ok(JsonBody::One(inc)) => {
                check_rules(&inc.key);
                // Accepted only when the text writes that whole number ("-0" is 0, "1e3" 1000).
                let whole = value.parse::<i128>().ok().or_else(|| {
                    value.parse::<f64>().ok().filter(|f| f.fract() == 0.0).map(|f| f as i128)
                });
                prop_assert_eq!(whole, Some(inc.value as i128));
            }
            Ok(JsonBody::Many(_)) => prop_assert!(false, "one object parsed as a batch"),
            Err(e) => prop_assert_eq!(e.status.as_u16(), 400),
        }
    }

    #[test]
    fn valid_increments_round_trip_in_every_format(
        incs in proptest::collection::vec(("\\PC{1,40}", any::<i64>()), 1..20),
    ) {
        let incs: Vec<(String, i64)> = incs.into_iter().filter(|(k, _)| k.len() <= MAX_KEY_BYTES).collect();
        prop_assume!(!incs.is_empty());
        let (k0, v0) = &incs[0];
        let form = format!("key={}&value={v0}", percent(k0));
        let one = parse_form(&[form.as_bytes()]).unwrap();
        prop_assert_eq!((&one.key, one.value), (k0, *v0));

        let arr = serde_json::to_string(
            &incs.iter().map(|(k, v)| serde_json::json!({"key": k, "value": v})).collect::<Vec<_>>(),
        ).unwrap();
        match parse_json(arr.as_bytes(), 100).unwrap() {
            JsonBody::Many(v) => {
                let got: Vec<(String, i64)> = v.into_iter().map(|i| (i.key, i.value)).collect();
                prop_assert_eq!(&got, &incs);
            }
            JsonBody::One(_) => prop_assert!(false, "array parsed as one"),
        }
        let nd: String = incs
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": v}).to_string() + "\n")
            .collect();
        let got: Vec<(String, i64)> =
            parse_ndjson(nd.as_bytes(), 100).unwrap().into_iter().map(|i| (i.key, i.value)).collect();
        prop_assert_eq!(&got, &incs);
    }
}
