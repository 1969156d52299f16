//! `regex`: named groups into a `{name}` template.
//!
//! Config `{ from = "^prod/(?P<app>[^/]+)/(?P<rest>.+)$", to = "{app}/{rest}" }`. Like the
//! original vsync transformer, the regex is unanchored (add `^`/`$` yourself), it applies only
//! when it matches and every named group captured a non-empty string, and runs of `/` in the
//! result collapse to one. Differences (see plugins/README.md): the input is the mount-relative
//! path (no `<mount>data/` prefix), and `{name}` placeholders may sit anywhere in `to`, not only
//! as whole segments; literal text is kept as is.

use regex::Regex;
use serde::Deserialize;
use vsync_plugin_sdk::{Context, PluginError, Transformer};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    from: String,
    to: String,
}

enum Piece {
    Text(String),
    Group(String),
}

/// A compiled regex transformer.
pub struct RegexTransform {
    re: Regex,
    template: Vec<Piece>,
}

fn parse_template(to: &str, re: &Regex) -> Result<Vec<Piece>, PluginError> {
    let names: Vec<&str> = re.capture_names().flatten().collect();
    let mut out = Vec::new();
    let mut rest = to;
    while let Some(start) = rest.find('{') {
        out.push(Piece::Text(rest[..start].to_owned()));
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| PluginError::InvalidConfig(format!("`to`: unclosed `{{` in {to:?}")))?;
        let name = &rest[start + 1..start + end];
        if !names.contains(&name) {
            return Err(PluginError::InvalidConfig(format!(
                "`to` uses {{{name}}} but `from` has no group named `{name}` (named groups: {names:?})"
            )));
        }
        out.push(Piece::Group(name.to_owned()));
        rest = &rest[start + end + 1..];
    }
    out.push(Piece::Text(rest.to_owned()));
    Ok(out)
}

impl Transformer for RegexTransform {
    fn configure(config: &str) -> Result<Self, PluginError> {
        let c: Config = vsync_plugin_sdk::config(config)?;
        let re = Regex::new(&c.from).map_err(|e| PluginError::InvalidConfig(format!("`from`: {e}")))?;
        if re.capture_names().flatten().next().is_none() {
            return Err(PluginError::InvalidConfig("`from` has no named group `(?P<name>...)`".into()));
        }
        let template = parse_template(&c.to, &re)?;
        Ok(RegexTransform { re, template })
    }

    fn transform(&self, path: &str, _ctx: &Context) -> Result<Option<String>, PluginError> {
        let Some(caps) = self.re.captures(path) else {
            return Ok(None);
        };
        // Every named group must have captured something, as in the original vsync.
        for name in self.re.capture_names().flatten() {
            if caps.name(name).is_none_or(|m| m.as_str().is_empty()) {
                return Ok(None);
            }
        }
        let mut out = String::new();
        for piece in &self.template {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Group(g) => out.push_str(caps.name(g).map_or("", |m| m.as_str())),
            }
        }
        // Runs of `/` collapse to one (as in the original); leading and trailing `/` go too.
        let collapsed = out.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("/");
        if collapsed.is_empty() {
            return Err(PluginError::InvalidPath(format!("`{path}` maps to an empty path")));
        }
        vsync_plugin_sdk::check_relative_path(&collapsed)
            .map_err(|e| PluginError::InvalidPath(format!("`{path}`: {}", e.message())))?;
        Ok(Some(collapsed))
    }
}

vsync_plugin_sdk::export_transformer!(RegexTransform);

#[cfg(test)]
mod tests {
    use super::*;

    fn t(from: &str, to: &str) -> RegexTransform {
        RegexTransform::configure(&format!(r#"{{"from": {from:?}, "to": {to:?}}}"#)).unwrap()
    }

    #[test]
    fn named_groups_fill_the_template() {
        let ctx = vsync_plugin_sdk::testing::context().build();
        let r = t("^prod/(?P<app>[^/]+)/(?P<rest>.+)$", "{app}/{rest}");
        assert_eq!(r.transform("prod/billing/db/main", &ctx).unwrap().as_deref(), Some("billing/db/main"));
        assert_eq!(r.transform("dev/billing/db", &ctx).unwrap(), None);
    }

    #[test]
    fn original_vsync_rules_empty_groups_and_slashes() {
        let ctx = vsync_plugin_sdk::testing::context().build();
        let r = t("(?P<platform>runner)/(?P<env>dev|stage)?/?(?P<app>\\w+)?", "{platform}//{env}/{app}/secrets");
        assert_eq!(r.transform("runner/stage/myapp", &ctx).unwrap().as_deref(), Some("runner/stage/myapp/secrets"));
        assert_eq!(r.transform("runner/stage/", &ctx).unwrap(), None, "empty group: not applicable");
    }

    #[test]
    fn bad_configs_are_refused() {
        for cfg in [
            r#"{"from": "(", "to": "x"}"#,
            r#"{"from": "a", "to": "x"}"#,
            r#"{"from": "(?P<a>x)", "to": "{b}"}"#,
            r#"{"from": "(?P<a>x)"}"#,
        ] {
            assert!(matches!(RegexTransform::configure(cfg), Err(PluginError::InvalidConfig(_))), "{cfg}");
        }
    }

    #[test]
    fn original_vsync_docs_example_on_mount_relative_paths() {
        // The original's docs example, minus the `<mount>/data` segments it had to capture.
        let ctx = vsync_plugin_sdk::testing::context().build();
        let r = t(
            r"(?P<platform>runner)/(?P<env>(dev|test|stage|prod))?/?(?P<app>\w+)?/?",
            "{platform}/{env}/{app}/secrets",
        );
        assert_eq!(r.transform("runner/stage/app1", &ctx).unwrap().as_deref(), Some("runner/stage/app1/secrets"));
        assert_eq!(r.transform("runner/stage/", &ctx).unwrap(), None, "app empty: not applicable");
        // Unanchored, and what no group captured is dropped, as in the original.
        assert_eq!(r.transform("x/runner/prod/app2/extra", &ctx).unwrap().as_deref(), Some("runner/prod/app2/secrets"));
    }

    #[test]
    fn placeholders_inside_segments_and_literal_text() {
        let ctx = vsync_plugin_sdk::testing::context().build();
        let r = t("^prod/(?P<app>[^/]+)/(?P<rest>.+)$", "mirror/{app}-db/{rest}");
        assert_eq!(r.transform("prod/billing/main", &ctx).unwrap().as_deref(), Some("mirror/billing-db/main"));
    }

    #[test]
    fn unusable_outputs_are_invalid_path() {
        let ctx = vsync_plugin_sdk::testing::context().build();
        let empty = t("(?P<a>.+)", "/");
        assert!(matches!(empty.transform("x", &ctx), Err(PluginError::InvalidPath(_))));
        let dots = t("^(?P<a>[^/]+)$", "up/{a}");
        assert!(matches!(dots.transform("..", &ctx), Err(PluginError::InvalidPath(m)) if m.contains("..")));
        assert_eq!(dots.transform("ok", &ctx).unwrap().as_deref(), Some("up/ok"));
    }

    #[test]
    fn config_errors_name_the_field() {
        let Err(PluginError::InvalidConfig(m)) = RegexTransform::configure(r#"{"from": "(?P<a>x)", "to": "{a}", "too": 1}"#) else {
            panic!("unknown field accepted")
        };
        assert!(m.contains("too"), "{m}");
        let Err(PluginError::InvalidConfig(m)) = RegexTransform::configure(r#"{"from": "(?P<a>x)", "to": "{a"}"#) else {
            panic!("unclosed placeholder accepted")
        };
        assert!(m.contains("unclosed"), "{m}");
    }

    /// The vectors `vsync plugin validate` runs against the component, checked natively.
    #[test]
    fn vectors() {
        vsync_plugin_sdk::testing::vectors::check_transformer::<RegexTransform>(include_str!("../regex.vectors.toml"));
    }
}
