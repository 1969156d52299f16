//! `region`: maps `prod/<app>/<rest>` to `<region>/<app>/<rest>`, where `<region>` is the
//! destination's `region` label. Other paths are not this transformer's (`none`), so the next
//! transformer (or the identity) handles them.

use vsync_plugin_sdk::{Context, PluginError, Transformer};

/// The region transformer (no configuration).
pub struct Region;

impl Transformer for Region {
    fn configure(config: &str) -> Result<Self, PluginError> {
        // No settings; unknown ones are refused so a typo is not silently ignored.
        let _: NoSettings = vsync_plugin_sdk::config(config)?;
        Ok(Region)
    }

    fn transform(&self, path: &str, ctx: &Context) -> Result<Option<String>, PluginError> {
        let Some(rest) = path.strip_prefix("prod/") else {
            return Ok(None);
        };
        if rest.is_empty() {
            return Err(PluginError::InvalidPath("`prod/` has no app segment".into()));
        }
        let region = ctx.label("region").ok_or_else(|| {
            PluginError::Failed(format!("destination `{}` has no `region` label", ctx.destination))
        })?;
        Ok(Some(format!("{region}/{rest}")))
    }
}

/// Region takes no settings.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSettings {}

vsync_plugin_sdk::export_transformer!(Region);

#[cfg(test)]
mod tests {
    use super::*;
    use vsync_plugin_sdk::testing::context;

    #[test]
    fn maps_prod_paths_under_the_region() {
        let r = Region::configure("{}").unwrap();
        let eu = context().destination("eu").label("region", "eu").build();
        assert_eq!(r.transform("prod/billing/db", &eu).unwrap().as_deref(), Some("eu/billing/db"));
        assert_eq!(r.transform("dev/billing/db", &eu).unwrap(), None);
    }

    #[test]
    fn missing_label_and_bad_config_are_errors() {
        let r = Region::configure("{}").unwrap();
        let none = context().destination("eu").build();
        assert!(matches!(r.transform("prod/a", &none), Err(PluginError::Failed(m)) if m.contains("region")));
        assert!(matches!(Region::configure(r#"{"regoin": "eu"}"#), Err(PluginError::InvalidConfig(_))));
    }

    /// The vectors `vsync plugin validate` runs against region.wasm, checked natively.
    #[test]
    fn vectors() {
        vsync_plugin_sdk::testing::vectors::check_transformer::<Region>(include_str!("../region.vectors.toml"));
    }
}
