//! The chatsys conformance suite: black-box HTTP cases written once against the API contract and run
//! against the standalone server, the full stack and a deployed system (see `conformance_suite!`).

pub mod applications;
pub mod chats;
pub mod checks;
pub mod deletes;
pub mod errors;
pub mod events;
pub mod harness;
pub mod history;
pub mod messages;
pub mod ops;
pub use chatsys_scratch as scratch;
pub mod search;
pub mod security;
mod target;

pub use target::{
    CATCH_UP, HoldsTarget, Reply, Target, application_path, chat_path, chats_path, encode,
    eventually, message_path, messages_path, number_of, numbers_of, search_path, token_of, unique,
};

/// Expands to one test per conformance case. `setup` is evaluated in each test and yields something that
/// holds a [`Target`] (kept alive until the case ends); `attrs` are added to every test.
///
/// ```ignore
/// chatsys_conformance::conformance_suite!(
///     setup => chatsys_conformance::Target::from_env(),
///     attrs => [#[ignore = "needs CHATSYS_BASE_URL"]],
/// );
/// ```
#[macro_export]
macro_rules! conformance_suite {
    (setup => $setup:expr $(, attrs => $attrs:tt)? $(,)?) => {
        $crate::conformance_suite!(@modules ($setup) ($($attrs)?) {
            applications: [
                create_returns_201_with_the_application,
                tokens_are_distinct,
                get_returns_the_application,
                rename_returns_200_and_is_read_back,
                valid_names_are_stored_verbatim,
                invalid_names_are_422,
                unknown_tokens_are_404,
                listing_requires_the_admin_key,
                list_is_in_creation_order_and_paginated,
            ],
            chats: [
                create_returns_201_numbered_from_1,
                a_new_chat_is_readable_at_once,
                an_empty_list_is_an_empty_array,
                list_is_ordered_and_paginated,
                chats_count_is_exact_after_catch_up,
                concurrent_creates_get_distinct_numbers,
                unknown_chats_are_404,
                chats_of_an_unknown_application_are_404,
                non_canonical_chat_numbers_are_404,
                a_creation_body_must_be_an_object_when_present,
            ],
            messages: [
                create_returns_201_numbered_from_1,
                a_new_message_is_readable_at_once,
                edit_returns_200_and_is_read_back,
                the_last_put_wins,
                list_is_ordered_and_paginated,
                the_default_page_is_100,
                concurrent_creates_into_one_chat_get_1_to_200,
                messages_count_is_exact_after_catch_up,
                bodies_round_trip_verbatim,
                body_size_is_bounded,
                unknown_messages_are_404,
                non_canonical_message_numbers_are_404,
            ],
            search: [
                partial_match_ignores_case,
                short_queries_match,
                search_is_scoped_to_the_chat,
                matches_come_newest_first_or_by_relevance,
                every_word_must_match_and_phrases_keep_their_order,
                normalisation_and_case_folding,
                an_application_wide_search_names_each_chat,
                key_is_an_alias_of_q,
                results_are_paginated,
                unicode_queries_match,
                queries_are_literal,
                search_follows_edits,
                a_walk_survives_an_edit_of_a_pages_last_message,
                an_empty_query_is_400,
            ],
            history: [
                newest_first_pages_lead_back_to_the_first_message,
                before_mirrors_after,
                chats_list_newest_first,
                the_stream_continues_where_a_list_page_was_read,
                reads_carry_an_etag_and_answer_304_when_unchanged,
                an_edit_conditioned_on_an_old_etag_is_412,
            ],
            deletes: [
                a_deleted_message_is_gone_at_once_and_forgotten_once_stored,
                a_delete_conditioned_on_an_old_etag_is_412,
                a_delete_racing_edits_ends_deleted,
                a_deleted_chat_goes_with_its_messages,
                streams_say_what_was_deleted_and_end_with_the_chat,
                deleting_an_application_needs_the_admin_key,
            ],
            events: [
                events_follow_creates_and_edits_in_order,
                a_stream_resumes_after_its_last_event_id,
                two_subscribers_see_the_same_sequence,
                streams_of_unknown_chats_are_404,
                an_idle_stream_sends_heartbeats,
            ],
            errors: [
                malformed_json_is_400,
                invalid_utf8_is_400,
                content_type_is_not_required,
                oversized_requests_are_413,
                unknown_routes_are_404,
                wrong_methods_are_405,
                hostile_tokens_are_404,
                invalid_list_queries_are_400,
                hostile_queries_are_never_5xx,
                non_canonical_list_queries_are_400,
                invisible_names_are_422,
                unusable_request_ids_are_replaced,
            ],
            security: [
                preflights_of_allowed_origins_answer_204,
                allowed_origins_read_answers_and_their_headers,
                other_origins_are_refused_before_anything_is_done,
                event_streams_open_cross_origin,
                a_retried_create_gets_the_first_answer,
                concurrent_retries_create_once,
                a_key_reused_for_another_request_is_422,
                keys_are_scoped_per_application,
                a_replaced_token_names_nothing,
                streams_end_when_their_token_is_replaced,
                oversized_request_heads_get_the_error_body,
            ],
            ops: [
                health_probes_answer_200,
                metrics_count_requests,
                openapi_describes_every_route,
                the_document_is_the_routes_served,
                the_document_holds_together,
                every_response_has_a_request_id,
                a_client_request_id_is_echoed,
            ],
        });
    };
    (@modules $setup:tt $attrs:tt { $($module:ident: [$($case:ident),* $(,)?]),* $(,)? }) => {
        $(
            mod $module {
                #[allow(unused_imports)]
                use super::*;
                $($crate::conformance_suite!(@case $setup $attrs $module $case);)*
            }
        )*
    };
    (@case ($setup:expr) ($([$(#[$attr:meta])*])?) $module:ident $case:ident) => {
        $($(#[$attr])*)?
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let served = $setup;
            $crate::$module::$case($crate::HoldsTarget::target(&served)).await;
        }
    };
}
