//! One home for the defaults of a run: the built-in values, the help text of
//! the flags that override them, and the typed `seggpu.defaults` a weights
//! file may store (docs/contract.md §5, §7, §8, §9). The README's list of
//! defaults is checked against [`summary`] by a test, so all of them agree.

use serde::Serialize;

use crate::graph::build::GraphParams;

/// Declares each built-in default once: its constant, and the help text of
/// its flag with the value spelled from the same literal.
macro_rules! builtin_defaults {
    ($( $(#[$doc:meta])* $name:ident / $help:ident : $ty:ty = $value:literal, $key:literal, $text:literal; )*) => {
        $(
            $(#[$doc])*
            pub const $name: $ty = $value;
            #[doc = concat!("Help text of the flag overriding `", $key, "`.")]
            pub const $help: &str = concat!($text, " [model default, else ", stringify!($value), "]");
        )*
        /// `key value` of every built-in default a model may override, in
        /// the order the README lists them.
        pub const BUILTIN: &[(&str, &str)] = &[$(($key, stringify!($value))),*];
    };
}

builtin_defaults! {
    /// Transcript neighbours per transcript, itself included.
    K_TX / K_TX_HELP: usize = 5, "k_tx",
        "Transcript neighbours per transcript, itself included";
    /// Largest transcript–transcript distance, µm, inclusive.
    DIST_TX / DIST_TX_HELP: f64 = 5.0, "dist_tx",
        "Largest transcript–transcript distance in µm, inclusive";
    /// Candidate nuclei per transcript.
    K_BD / K_BD_HELP: usize = 4, "k_bd",
        "Candidate nuclei per transcript";
    /// Candidate nucleus distance, µm, strict.
    DIST_BD / DIST_BD_HELP: f64 = 12.0, "dist_bd",
        "Candidate nucleus distance in µm, strict";
    /// Assignment threshold.
    SCORE_CUT / SCORE_CUT_HELP: f32 = 0.5, "score_cut",
        "Assignment threshold in [0, 1], or `auto` for the knee of the score curve";
    /// Smallest fragment, in transcripts.
    MIN_TRANSCRIPTS / MIN_TRANSCRIPTS_HELP: usize = 5, "min_transcripts",
        "Smallest fragment, in transcripts";
}

/// Tile core side, µm (results do not depend on it with the exact margin).
pub const TILE_SIZE: f64 = 400.0;

/// The built-in defaults as the README states them: `k_tx 5, dist_tx 5.0, …`.
pub fn summary() -> String {
    BUILTIN
        .iter()
        .map(|(key, value)| format!("{key} {value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Most transcript neighbours (`k_tx`) or candidate nuclei (`k_bd`): the
/// graphs hold k entries per transcript, so a larger k only exhausts memory.
pub const MAX_K: usize = 256;

/// The numeric checks shared by the command line and a model's
/// `seggpu.defaults`; `name` is the flag (`--dist-tx`) or the key
/// (`` `dist_tx` ``) the message names.
///
/// A distance in µm: positive and finite.
pub fn check_distance(name: &str, v: f64) -> Result<(), String> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(format!(
            "{name} is {v}, expected a positive finite distance in µm"
        ))
    }
}

/// A neighbour count: 1 to [`MAX_K`].
pub fn check_count(name: &str, v: usize) -> Result<(), String> {
    if (1..=MAX_K).contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "{name} is {v}, expected at least 1 and at most {MAX_K}"
        ))
    }
}

/// A score threshold in [0, 1] (NaN is out of range).
pub fn check_score_cut(name: &str, v: f32) -> Result<(), String> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(format!("{name} is {v}, expected a number in [0, 1]"))
    }
}

/// The graph flags of `segment` and `train`, resolved against a model's
/// stored defaults the same way by both.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GraphFlags {
    #[arg(long, help = K_TX_HELP)]
    pub k_tx: Option<usize>,
    #[arg(long, help = DIST_TX_HELP, allow_negative_numbers = true)]
    pub dist_tx: Option<f64>,
    /// No distance cap for transcript neighbours (segger_dev's stored graphs had none). `seggpu
    /// train` stores it in the model's defaults; --dist-tx turns the cap back on [model
    /// default, else off].
    #[arg(long)]
    pub no_dist_cap: bool,
    #[arg(long, help = K_BD_HELP)]
    pub k_bd: Option<usize>,
    #[arg(long, help = DIST_BD_HELP, allow_negative_numbers = true)]
    pub dist_bd: Option<f64>,
}

impl GraphFlags {
    /// The graph parameters: each flag over the model's `stored` default
    /// over the built-in one, checked as the stored defaults are. A given
    /// --dist-tx caps the distance even where the model stores
    /// `no_dist_cap`; --no-dist-cap wins over both.
    pub fn resolve(&self, stored: &StoredDefaults) -> anyhow::Result<GraphParams> {
        let k_tx = self.k_tx.or(stored.k_tx).unwrap_or(K_TX);
        let dist_tx = self.dist_tx.or(stored.dist_tx).unwrap_or(DIST_TX);
        let k_bd = self.k_bd.or(stored.k_bd).unwrap_or(K_BD);
        let dist_bd = self.dist_bd.or(stored.dist_bd).unwrap_or(DIST_BD);
        let check = |r: Result<(), String>| r.map_err(anyhow::Error::msg);
        check(check_count("--k-tx", k_tx))?;
        check(check_count("--k-bd", k_bd))?;
        check(check_distance("--dist-tx", dist_tx))?;
        check(check_distance("--dist-bd", dist_bd))?;
        let uncapped =
            self.no_dist_cap || (self.dist_tx.is_none() && stored.no_dist_cap == Some(true));
        Ok(GraphParams {
            k_tx,
            dist_tx: (!uncapped).then_some(dist_tx),
            k_bd,
            dist_bd,
        })
    }
}

/// The defaults a model was trained for (`seggpu.defaults`, a JSON object).
/// Every key is optional; an unknown key or a value of the wrong type is an
/// error, so a typo in a weights file cannot silently fall back to the
/// built-in value. Fields are in alphabetical order so that the stored JSON
/// is the same as a sorted JSON object's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StoredDefaults {
    /// Candidate nucleus distance, µm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dist_bd: Option<f64>,
    /// Transcript neighbour distance, µm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dist_tx: Option<f64>,
    /// Candidate nuclei per transcript.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k_bd: Option<usize>,
    /// Transcript neighbours per transcript, itself included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k_tx: Option<usize>,
    /// Smallest fragment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_transcripts: Option<usize>,
    /// `true`: no distance cap for transcript neighbours (`--no-dist-cap`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_dist_cap: Option<bool>,
    /// Assignment threshold in [0, 1].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score_cut: Option<f32>,
}

impl StoredDefaults {
    /// Parses the metadata value; the error names the key that is wrong and
    /// what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| format!("is not a JSON object ({e})"))?;
        let mut parsed = Self::default();
        for (key, value) in &object {
            let count = || {
                value
                    .as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| format!("`{key}` is {value}, expected a whole number"))
            };
            let number = || {
                value
                    .as_f64()
                    .ok_or_else(|| format!("`{key}` is {value}, expected a number"))
            };
            match key.as_str() {
                "dist_bd" => parsed.dist_bd = Some(number()?),
                "dist_tx" => parsed.dist_tx = Some(number()?),
                "k_bd" => parsed.k_bd = Some(count()?),
                "k_tx" => parsed.k_tx = Some(count()?),
                "min_transcripts" => parsed.min_transcripts = Some(count()?),
                "score_cut" => parsed.score_cut = Some(number()? as f32),
                "no_dist_cap" => {
                    parsed.no_dist_cap = Some(
                        value
                            .as_bool()
                            .ok_or_else(|| format!("`{key}` is {value}, expected true or false"))?,
                    )
                }
                _ => {
                    return Err(format!(
                        "unknown key `{key}`; expected any of {}, no_dist_cap",
                        BUILTIN
                            .iter()
                            .map(|(key, _)| *key)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            }
        }
        parsed.validate()?;
        Ok(parsed)
    }

    fn validate(&self) -> Result<(), String> {
        let key = |k: &str| format!("`{k}`");
        for (k, v) in [("dist_bd", self.dist_bd), ("dist_tx", self.dist_tx)] {
            v.map_or(Ok(()), |v| check_distance(&key(k), v))?;
        }
        for (k, v) in [("k_bd", self.k_bd), ("k_tx", self.k_tx)] {
            v.map_or(Ok(()), |v| check_count(&key(k), v))?;
        }
        self.score_cut
            .map_or(Ok(()), |v| check_score_cut(&key("score_cut"), v))
    }

    /// The JSON stored in a weights file.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain numbers serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_the_built_in_defaults() {
        let readme = include_str!("../README.md");
        let stated = summary();
        assert!(
            readme.contains(&stated),
            "README.md does not state the built-in defaults `{stated}`"
        );
    }

    #[test]
    fn help_text_spells_the_value() {
        assert!(
            K_TX_HELP.ends_with("[model default, else 5]"),
            "{K_TX_HELP}"
        );
        assert!(DIST_BD_HELP.ends_with("[model default, else 12.0]"));
        assert_eq!(BUILTIN.len(), 6);
    }

    #[test]
    fn stored_defaults_round_trip_sorted() {
        let text = r#"{"dist_bd":12,"dist_tx":5,"k_bd":4,"k_tx":5,"score_cut":0.5}"#;
        let d = StoredDefaults::parse(text).unwrap();
        assert_eq!(d.k_tx, Some(5));
        assert_eq!(d.dist_bd, Some(12.0));
        assert_eq!(
            d.to_json(),
            r#"{"dist_bd":12.0,"dist_tx":5.0,"k_bd":4,"k_tx":5,"score_cut":0.5}"#
        );
        assert_eq!(
            StoredDefaults::parse("{}").unwrap(),
            StoredDefaults::default()
        );
    }

    #[test]
    fn unknown_keys_and_fractional_counts_are_rejected() {
        let e = StoredDefaults::parse(r#"{"k_tx": 5, "kbd": 4}"#).unwrap_err();
        assert!(e.contains("unknown key `kbd`"), "{e}");
        let e = StoredDefaults::parse(r#"{"k_tx": 5.5}"#).unwrap_err();
        assert_eq!(e, "`k_tx` is 5.5, expected a whole number");
        let e = StoredDefaults::parse(r#"{"dist_tx": "5"}"#).unwrap_err();
        assert_eq!(e, "`dist_tx` is \"5\", expected a number");
        let e = StoredDefaults::parse(r#"{"k_bd": -1}"#).unwrap_err();
        assert_eq!(e, "`k_bd` is -1, expected a whole number");
        let e = StoredDefaults::parse(r#"{"score_cut": 1.5}"#).unwrap_err();
        assert!(e.contains("score_cut"), "{e}");
        let e = StoredDefaults::parse(r#"{"k_tx": 0}"#).unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e = StoredDefaults::parse(r#"{"k_bd": 100000000000}"#).unwrap_err();
        assert_eq!(
            e,
            "`k_bd` is 100000000000, expected at least 1 and at most 256"
        );
        let e = StoredDefaults::parse(r#"{"dist_bd": 0}"#).unwrap_err();
        assert!(e.contains("`dist_bd` is 0"), "{e}");
        let e = StoredDefaults::parse(r#"{"dist_tx": -2}"#).unwrap_err();
        assert_eq!(
            e,
            "`dist_tx` is -2, expected a positive finite distance in µm"
        );
        assert!(StoredDefaults::parse("[1, 2]").is_err());
        let e = StoredDefaults::parse(r#"{"no_dist_cap": 1}"#).unwrap_err();
        assert_eq!(e, "`no_dist_cap` is 1, expected true or false");
    }

    #[test]
    fn a_stored_no_dist_cap_is_kept_unless_a_flag_caps() {
        let stored = StoredDefaults::parse(r#"{"dist_tx": 3, "no_dist_cap": true}"#).unwrap();
        assert_eq!(stored.to_json(), r#"{"dist_tx":3.0,"no_dist_cap":true}"#);
        let plain = GraphFlags::default();
        assert_eq!(plain.resolve(&stored).unwrap().dist_tx, None);
        let capped = GraphFlags {
            dist_tx: Some(4.0),
            ..GraphFlags::default()
        };
        assert_eq!(capped.resolve(&stored).unwrap().dist_tx, Some(4.0));
        assert_eq!(
            plain.resolve(&StoredDefaults::default()).unwrap().dist_tx,
            Some(DIST_TX)
        );
        let uncapped = GraphFlags {
            no_dist_cap: true,
            ..capped
        };
        assert_eq!(
            uncapped
                .resolve(&StoredDefaults::default())
                .unwrap()
                .dist_tx,
            None
        );
        let e = GraphFlags {
            k_tx: Some(300),
            ..GraphFlags::default()
        }
        .resolve(&stored)
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--k-tx is 300, expected at least 1 and at most 256"
        );
    }
}
