//! The OpenAPI 3.1 document: the one written statement of every route, parameter, body, status code and
//! header. Routes and document come from the same `routes!` lists (see [`super::routes`]), so a route
//! cannot be served undocumented. The answers every operation of a kind shares (errors, `Retry-After`,
//! `X-Request-Id`) are added here, once, from the operation's shape.

use std::sync::OnceLock;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Object, ObjectBuilder, Ref, RefOr, Required, Schema, Type};
use utoipa::{Modify, OpenApi};

use super::REQUEST_ID_MAX_BYTES;
use super::error::{ErrorBody, ErrorCode, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatsys",
        description = "Applications, numbered chats and messages, with search.

Chats are numbered 1, 2, 3… within their application, messages 1, 2, 3… within their chat. Creating
a chat or a message answers with its number at once and stores it shortly after: it can be read at
once, and appears in lists and search once stored.

Every error has the body `{\"error\": {\"code\", \"message\"}}`; programs read `code` (see
`ErrorCode`). Besides the answers each operation lists, a method that a path does not list is
answered 405 `method_not_allowed`, with an `Allow` header naming the methods it takes.

Every response carries `X-Request-Id`: the client's own, when it sent a usable one (1 to 128
visible ASCII characters), or a fresh one. It is in the server's logs for that request.

Lists are pages: follow the `Link` header's `rel=\"next\"` URL until a page has none.

Creates are safe to retry with an `Idempotency-Key` header: the retry gets the first answer, and
nothing is created twice (see the header's description on each create).

Security: an application's token, in the path, is its only credential: whoever holds it reads and
writes the application's chats and messages, and can replace the token (`POST …/token`). The admin
key lists every application with its token. Web pages may call the API from the origins the server
allows (CORS); a request from a page of any other origin is refused (`origin_not_allowed`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
        contact(name = "chatsys maintainers"),
    ),
    servers((url = "/", description = "The server this document was read from")),
    tags(
        (name = "applications", description = "An application owns chats and is named by its token."),
        (name = "chats", description = "Chats of an application, numbered from 1."),
        (name = "messages", description = "Messages of a chat, numbered from 1, and their search."),
        (name = "operations", description = "Probes, metrics and this document, for operators and tools."),
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode)),
    modifiers(&AdminKey),
)]
pub struct ApiDoc;

struct AdminKey;

impl Modify for AdminKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The key the server was started with (`--admin-key`, `CHATSYS_ADMIN_KEY`)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document served at `/openapi.json`, built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = super::routes().into_openapi();
        SharedAnswers.modify(&mut doc);
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        doc.to_pretty_json()
            .expect("the OpenAPI document serialises")
    })
}

/// Adds what every operation of a kind answers: its errors by shape (a path parameter can name
/// nothing, a body can be malformed, late or too large, a query parameter can be out of range), the 500
/// and 503 of any operation on the data, and `X-Request-Id` on every request and response. What an
/// operation documents itself is kept.
///
/// Runs after the routes are collected, since `routes!` adds the operations after the derive's
/// modifiers ran.
struct SharedAnswers;

impl Modify for SharedAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                complete(operation);
            }
        }
    }
}

/// Tags of the operations on applications, chats and messages, which reach the backing services.
const DATA_TAGS: [&str; 3] = ["applications", "chats", "messages"];

fn complete(operation: &mut Operation) {
    if let Some(RefOr::T(body)) = &mut operation.request_body {
        not_null(body);
    }
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    let has_path = parameters.iter().any(|p| is_in(p, ParameterIn::Path));
    let has_query = parameters.iter().any(|p| is_in(p, ParameterIn::Query));
    parameters.push(RefOr::T(request_id_parameter()));
    let has_body = operation.request_body.is_some();
    let has_key = parameters
        .iter()
        .any(|p| matches!(p, RefOr::T(p) if p.name == "Idempotency-Key"));
    let on_data = operation
        .tags
        .iter()
        .flatten()
        .any(|tag| DATA_TAGS.contains(&tag.as_str()));

    let mut errors: Vec<(u16, String)> = Vec::new();
    if on_data {
        let mut bad_request = Vec::new();
        if has_body {
            bad_request.push(
                "the body is not JSON (`malformed_json`) or could not be read (`bad_request`)",
            );
        }
        if has_query {
            bad_request.push("a query parameter is missing or out of range (`invalid_query`)");
        }
        if has_key {
            bad_request.push("`Idempotency-Key` is malformed or given twice (`invalid_header`)");
        }
        if !bad_request.is_empty() {
            errors.push((400, sentence(&bad_request.join("; or "))));
        }
        if has_path {
            errors.push((
                404,
                "No such application, chat or message (`not_found`).".into(),
            ));
        }
        if has_body {
            errors.push((
                408,
                "The body did not arrive in time (`timeout`); the server closes the connection."
                    .into(),
            ));
            errors.push((
                413,
                "The body is over the size limit (`payload_too_large`).".into(),
            ));
            errors.push((
                422,
                if has_key {
                    "The body is JSON of the wrong shape, or a field is invalid (`invalid_field`; the message names the field), or the `Idempotency-Key` was used for a different request (`idempotency_key_reused`)."
                } else {
                    "The body is JSON of the wrong shape, or a field is invalid (`invalid_field`); the message names the field."
                }
                .into(),
            ));
        }
        if has_key {
            errors.push((
                409,
                "A request with this `Idempotency-Key` is still being served (`idempotency_key_in_flight`): retry after `Retry-After` seconds.".into(),
            ));
        }
        errors.push((
            429,
            "A limit was reached (`too_many_requests`): this application's request rate, or its event streams on this server (or the server's): retry after `Retry-After` seconds.".into(),
        ));
        errors.push((
            500,
            "A fault of the server (`internal`); its logs say more, under the request id.".into(),
        ));
        errors.push((
            503,
            "A backing service is down, or too many uploads are in progress (`service_unavailable`): retry after `Retry-After` seconds."
                .into(),
        ));
    }
    errors.push((
        403,
        "The request came from a web page whose origin the server does not allow (`origin_not_allowed`)."
            .into(),
    ));
    errors.push((
        414,
        "The path and query are over the server's limit (`uri_too_long`).".into(),
    ));
    errors.push((
        431,
        "Too many request headers, or too many bytes of them (`headers_too_large`).".into(),
    ));
    for (status, description) in errors {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(error_response(status, description)));
    }
    for (status, response) in operation.responses.responses.iter_mut() {
        if let RefOr::T(response) = response {
            response
                .headers
                .insert("X-Request-Id".into(), RefOr::T(request_id_header()));
            if has_key && status == "201" {
                response
                    .headers
                    .insert("Idempotent-Replayed".into(), RefOr::T(replayed_header()));
            }
        }
    }
}

/// utoipa writes a body that may be left out as one that may be `null`; here it means absent, and a
/// `null` body is refused like any other non-object, so the schema is the object's alone.
fn not_null(body: &mut RequestBody) {
    for content in body.content.values_mut() {
        let RefOr::T(content) = content else { continue };
        if let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema {
            let not_null: Vec<_> = one_of
                .items
                .iter()
                .filter(|item| !matches!(item, RefOr::T(Schema::Object(o)) if o.schema_type == Type::Null.into()))
                .cloned()
                .collect();
            if let [only] = not_null.as_slice() {
                content.schema = Some(only.clone());
            }
        }
    }
}

fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    let first = chars
        .next()
        .map(|c| c.to_uppercase().to_string())
        .unwrap_or_default();
    format!("{first}{}.", chars.as_str())
}

fn is_in(parameter: &RefOr<Parameter>, place: ParameterIn) -> bool {
    matches!(parameter, RefOr::T(p) if p.parameter_in == place)
}

fn error_response(status: u16, description: String) -> Response {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if status == 503 || status == 429 {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                ))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        );
    }
    if status == 408 {
        response = response.header(
            "Connection",
            HeaderBuilder::new()
                .schema(Some(Object::with_type(Type::String)))
                .description(Some("`close`"))
                .build(),
        );
    }
    response.build()
}

/// The pattern of a request id the server keeps (visible ASCII, not too long). Requests state no
/// pattern for it, since the server takes any value and replaces the ones that do not match.
fn request_id_pattern() -> String {
    format!("^[!-~]{{1,{REQUEST_ID_MAX_BYTES}}}$")
}

fn request_id_parameter() -> Parameter {
    ParameterBuilder::new()
        .name("X-Request-Id")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(format!(
            "The client's id for this request, echoed in the response and logged when it matches `{}`; any other is replaced by a fresh id, never refused",
            request_id_pattern()
        )))
        .schema(Some(Object::with_type(Type::String)))
        .build()
}

fn replayed_header() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["true"]))))
        .description(Some(
            "`true` when this answer repeats an earlier request's with the same `Idempotency-Key`; absent otherwise",
        ))
        .build()
}

fn request_id_header() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(request_id_pattern())),
        ))
        .description(Some(
            "The request's id: the client's own when it sent a usable one, otherwise a fresh one",
        ))
        .build()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn document() -> Value {
        serde_json::from_str(super::document()).unwrap()
    }

    /// The schema attribute takes only a literal: the document must still carry the server's rule.
    #[test]
    fn the_documented_name_pattern_is_the_servers_rule() {
        assert_eq!(
            document()["components"]["schemas"]["ApplicationName"]["properties"]["name"]["pattern"],
            chatsys_core::domain::VISIBLE_CHARACTER
        );
    }
}
