//! TOML → configuration types, with the full key in every error
//! (`metadata.onprem.interfaces.eth0.addresses[0]: ...`), for the whole file
//! ([`crate::config`]) and for the sections that other modules own (e.g.
//! [`crate::metadata`]): apart from both, so neither reaches into the other.

/// Deserializes TOML; a type error names its full key on top of toml's
/// message (which quotes the line but not the table it is in).
pub fn from_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let toml_err = |e: toml::de::Error| e.to_string().trim_end().to_string();
    let de = toml::Deserializer::parse(text).map_err(toml_err)?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = toml_err(e.into_inner());
        // A syntax error has no path (".").
        if path == "." { inner } else { format!("{path}: {inner}") }
    })
}
