//! `glob` filter: `{ include = ["prod/**"], exclude = ["**/tmp/**"] }`. A path is included when
//! it matches some include pattern (default: everything) and no exclude pattern. `*` stays
//! within one segment, `**` crosses segments.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use vsync_plugin_sdk::{Context, Filter, PluginError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    include: Option<Vec<String>>,
    #[serde(default)]
    exclude: Vec<String>,
}

/// Include/exclude glob filter.
pub struct Glob {
    include: GlobSet,
    exclude: GlobSet,
}

fn set(field: &str, patterns: &[String]) -> Result<GlobSet, PluginError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| PluginError::InvalidConfig(format!("`{field}` pattern {p:?}: {e}")))?;
        b.add(g);
    }
    b.build().map_err(|e| PluginError::InvalidConfig(format!("`{field}`: {e}")))
}

impl Filter for Glob {
    fn configure(config: &str) -> Result<Self, PluginError> {
        let c: Config = vsync_plugin_sdk::config(config)?;
        let include = c.include.unwrap_or_else(|| vec!["**".into()]);
        Ok(Glob {
            include: set("include", &include)?,
            exclude: set("exclude", &c.exclude)?,
        })
    }
    fn include(&self, path: &str, _ctx: &Context) -> Result<bool, PluginError> {
        Ok(self.include.is_match(path) && !self.exclude.is_match(path))
    }
}

vsync_plugin_sdk::export_filter!(Glob);

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn include_and_exclude() {
        let ctx = vsync_plugin_sdk::testing::context().build();
        let g = Glob::configure(r#"{"include": ["prod/*/**"], "exclude": ["**/tmp/**"]}"#).unwrap();
        assert!(g.include("prod/eu/app/db", &ctx).unwrap());
        assert!(!g.include("prod/eu/tmp/x", &ctx).unwrap());
        assert!(!g.include("dev/eu/app", &ctx).unwrap());
        let all = Glob::configure("{}").unwrap();
        assert!(all.include("anything/at/all", &ctx).unwrap());
        assert!(Glob::configure(r#"{"include": ["a[" ]}"#).is_err());
    }

    /// The vectors `vsync plugin validate` runs against the component, checked natively.
    #[test]
    fn vectors() {
        vsync_plugin_sdk::testing::vectors::check_filter::<Glob>(include_str!("../glob.vectors.toml"));
    }
}
