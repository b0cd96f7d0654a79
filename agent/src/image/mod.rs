//! Image store: pulls, verifies and unpacks OCI images into a content-addressed cache.
