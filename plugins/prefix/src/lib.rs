//! `prefix`: replaces a leading path prefix. Config `{ from = "prod/", to = "eu/" }`; a path
//! that does not start with `from` is not this transformer's (`none`).

use serde::Deserialize;
use vsync_plugin_sdk::{Context, PluginError, Transformer};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    from: String,
    #[serde(default)]
    to: String,
}

/// Replaces `from` at the start of a path with `to`.
pub struct Prefix(Config);

impl Transformer for Prefix {
    fn configure(config: &str) -> Result<Self, PluginError> {
        let c: Config = vsync_plugin_sdk::config(config)?;
        if c.from.is_empty() {
            return Err(PluginError::InvalidConfig("`from` must not be empty".into()));
        }
        Ok(Prefix(c))
    }
    fn transform(&self, path: &str, _ctx: &Context) -> Result<Option<String>, PluginError> {
        let Some(rest) = path.strip_prefix(&self.0.from) else {
            return Ok(None);
        };
        let out = format!("{}{rest}", self.0.to);
        vsync_plugin_sdk::check_relative_path(&out)
            .map_err(|e| PluginError::InvalidPath(format!("`{path}`: {}", e.message())))?;
        Ok(Some(out))
    }
}

vsync_plugin_sdk::export_transformer!(Prefix);

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn replaces_only_a_leading_prefix() {
        let ctx = vsync_plugin_sdk::testing::context().build();
        let p = Prefix::configure(r#"{"from": "prod/", "to": "eu/"}"#).unwrap();
        assert_eq!(p.transform("prod/app", &ctx).unwrap().as_deref(), Some("eu/app"));
        assert_eq!(p.transform("x/prod/app", &ctx).unwrap(), None);
        assert!(Prefix::configure(r#"{"from": ""}"#).is_err());
        assert!(Prefix::configure(r#"{"form": "x"}"#).is_err());
    }

    #[test]
    fn outputs_must_be_valid_relative_paths() {
        let ctx = vsync_plugin_sdk::testing::context().build();
        let strip = Prefix::configure(r#"{"from": "prod/"}"#).unwrap();
        assert_eq!(strip.transform("prod/app/db", &ctx).unwrap().as_deref(), Some("app/db"));
        assert!(matches!(strip.transform("prod/", &ctx), Err(PluginError::InvalidPath(_))));
        let up = Prefix::configure(r#"{"from": "prod/", "to": "../"}"#).unwrap();
        assert!(matches!(up.transform("prod/app", &ctx), Err(PluginError::InvalidPath(_))));
    }

    /// The vectors `vsync plugin validate` runs against the component, checked natively.
    #[test]
    fn vectors() {
        vsync_plugin_sdk::testing::vectors::check_transformer::<Prefix>(include_str!("../prefix.vectors.toml"));
    }
}
