//! nubo worker: runs functions in container sandboxes.
