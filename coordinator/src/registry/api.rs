//! The image API, `/api/v1/images...` (see [`crate::contract::routes`]): list, import
//! and delete.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, Query};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use super::{ImageSummary, Registry, RegistryError};
use crate::contract::body::{ErrorBody, List};
use crate::contract::images::ImageDeleted;
use crate::contract::routes::{DeleteImage, ImportImages, ListImages, Route};

/// The image API's routes. Their methods are the contract's: the contract test in
/// `crate::edge::http` calls each.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(ListImages::PATH, get(list_images))
        .route(ImportImages::PATH, post(import))
        .route(DeleteImage::PATH, delete(delete_image))
}

/// An error answer of the image API: an [`ErrorBody`] with the error's status.
fn api_error(e: RegistryError) -> Response {
    (
        e.status(),
        Json(ErrorBody {
            error: e.to_string(),
        }),
    )
        .into_response()
}

type Reply<T> = Result<Json<T>, Response>;

async fn list_images(Extension(reg): Extension<Arc<Registry>>) -> Json<List<ImageSummary>> {
    Json(List { items: reg.list() })
}

async fn import(
    Extension(reg): Extension<Arc<Registry>>,
    Query(ImportImages { name }): Query<ImportImages>,
    body: Body,
) -> Reply<List<ImageSummary>> {
    let started = std::time::Instant::now();
    match reg
        .import_stream(body.into_data_stream(), name.filter(|n| !n.is_empty()))
        .await
    {
        Ok(items) => {
            tracing::info!(
                images = items.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "import done"
            );
            Ok(Json(List { items }))
        }
        Err(e) => {
            tracing::warn!(error = %e, "image import refused");
            Err(api_error(e))
        }
    }
}

async fn delete_image(
    Extension(reg): Extension<Arc<Registry>>,
    Path(DeleteImage { name }): Path<DeleteImage>,
) -> Reply<ImageDeleted> {
    match tokio::task::spawn_blocking(move || reg.delete(&name)).await {
        Ok(Ok(deleted)) => Ok(Json(ImageDeleted { deleted })),
        Ok(Err(e)) => Err(api_error(e)),
        Err(e) => Err(api_error(RegistryError::Upload(format!(
            "delete task failed: {e}"
        )))),
    }
}
