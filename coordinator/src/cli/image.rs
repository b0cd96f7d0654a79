//! `baton image import|list|delete`: images the coordinator serves to its agents
//! (air-gapped sites).

use std::path::PathBuf;
use std::time::SystemTime;

use clap::Subcommand;

use super::client::Client;
use super::render::images_table;
use super::{structured, CliError, Output};
use crate::contract::images::ImageSummary;
use crate::contract::{routes, NoBody};
use crate::model::quantity;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Upload an OCI image archive (a tar of an OCI layout, e.g. from `skopeo copy ...
    /// oci-archive:FILE` or `docker save`) or an OCI layout directory (admin only).
    Import {
        file: PathBuf,
        /// REPOSITORY[:TAG] to store it as, when the archive names its images only by tag
        /// (or not at all); REPOSITORY alone keeps each image's tag.
        #[arg(long)]
        name: Option<String>,
    },
    /// List imported images.
    List {
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Output>,
    },
    /// Delete an imported image (REPOSITORY:TAG); blobs no other image needs go with it.
    Delete { name: String },
}

/// `baton image ...`: the coordinator's image registry.
pub(super) async fn image(client: &Client, action: &ImageCommand) -> Result<String, CliError> {
    let platforms = |s: &ImageSummary| {
        if s.platforms.is_empty() {
            "-".to_owned()
        } else {
            s.platforms.join(",")
        }
    };
    match action {
        ImageCommand::Import { file, name } => {
            let started = std::time::Instant::now();
            let bytes = std::fs::metadata(file).map(|m| m.len()).ok();
            let body = super::upload::upload_body(file)
                .await
                .map_err(|e| CliError::Usage(format!("error: {e}")))?;
            let import = routes::ImportImages { name: name.clone() };
            let list = client.upload(&import, body).await?.items;
            let secs = started.elapsed().as_secs_f64();
            let mut out = String::new();
            for s in &list {
                out.push_str(&format!(
                    "image/{} imported ({}, {}, {})\n",
                    s.name,
                    s.digest,
                    platforms(s),
                    quantity::format_memory(s.size)
                ));
            }
            match bytes.filter(|_| file.is_file()) {
                Some(b) => eprintln!(
                    "uploaded {} in {secs:.2} s ({:.1} MB/s)",
                    quantity::format_memory(b),
                    b as f64 / 1e6 / secs.max(1e-6)
                ),
                None => eprintln!("uploaded in {secs:.2} s"),
            }
            Ok(out)
        }
        ImageCommand::List { output } => {
            let list = client.call(&routes::ListImages {}, &NoBody).await?;
            if let Some(text) = structured(&list, *output) {
                return text;
            }
            if list.items.is_empty() {
                eprintln!("No images imported");
                return Ok(String::new());
            }
            Ok(images_table(
                &list.items,
                *output == Some(Output::Wide),
                SystemTime::now(),
            ))
        }
        ImageCommand::Delete { name } => {
            let delete = routes::DeleteImage { name: name.clone() };
            client.call(&delete, &NoBody).await?;
            Ok(format!("image \"{name}\" deleted\n"))
        }
    }
}
