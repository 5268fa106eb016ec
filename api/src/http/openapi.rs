//! The OpenAPI 3.1 document, generated from the handlers' annotations: the one written statement of
//! every route, body, status code and header.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{applications, chats, error, messages};

#[derive(OpenApi)]
#[openapi(
    info(title = "chatsys", description = "Applications, numbered chats and messages, with search."),
    paths(
        applications::create, applications::list, applications::read, applications::rename,
        chats::create, chats::list, chats::read,
        messages::create, messages::list, messages::read, messages::edit, messages::search,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&AdminKey),
)]
struct ApiDoc;

struct AdminKey;

impl Modify for AdminKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json()
        .expect("the OpenAPI document serialises")
}
