//! `identity`: the bottom of every stack. A path no configured transformer claims keeps its name.

use vsync_plugin_sdk::{Context, PluginError, Transformer};

/// Returns the path unchanged.
pub struct Identity;

impl Transformer for Identity {
    fn configure(_config: &str) -> Result<Self, PluginError> {
        Ok(Identity)
    }
    fn transform(&self, path: &str, _ctx: &Context) -> Result<Option<String>, PluginError> {
        Ok(Some(path.to_owned()))
    }
}

vsync_plugin_sdk::export_transformer!(Identity);

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn keeps_the_path() {
        let ctx = vsync_plugin_sdk::testing::context().build();
        assert_eq!(Identity.transform("a/b", &ctx).unwrap().as_deref(), Some("a/b"));
    }

    /// The vectors `vsync plugin validate` runs against the component, checked natively.
    #[test]
    fn vectors() {
        vsync_plugin_sdk::testing::vectors::check_transformer::<Identity>(include_str!("../identity.vectors.toml"));
    }
}
