//! The web console's pages, and what lets a page of one member call another:
//! CORS for the cluster's own origins, and nobody else's.

mod common;

use common::TestNode;
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[tokio::test]
async fn the_pages_are_served_without_a_token_and_load_nothing_from_elsewhere() {
    let node = TestNode::start().await;
    let http = reqwest::Client::new();
    for (path, kind) in [
        ("/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
        ("/lib/cairn.js", "text/javascript"),
        ("/apps/todo/", "text/html"),
        ("/apps/todo/todo.js", "text/javascript"),
        ("/apps/todo/todo.css", "text/css"),
    ] {
        let response = http.get(node.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        let content_type = headers["content-type"].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        let body = response.text().await.unwrap();
        // Nothing from outside: no absolute URL in a src or href.
        for needle in ["src=\"http", "href=\"http", "from \"http", "@import"] {
            assert!(!body.contains(needle), "{path} loads from elsewhere: {needle}");
        }
    }
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(node.url("/apps/todo"))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(redirect.headers()["location"], "/apps/todo/");
    // Pages are only read: another method is the API's JSON 405 (after the
    // token, as for any route but a page's GET).
    node.refused(Method::POST, "/", "{}", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        .await;
    node.refused(
        Method::DELETE,
        "/apps/todo/",
        "",
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    // The data behind them still needs a token.
    let (status, _) =
        node.with_headers(Method::GET, "/v1/tables", "", &[("authorization", "Bearer nope")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    node.stop().await;
}

#[tokio::test]
async fn a_page_of_the_clusters_own_origin_gets_cors_and_others_get_403() {
    let node = TestNode::start().await;
    let port = node.addr.port();
    // The node by another loopback name: to the browser another origin, to
    // the node its own (a member's page is trusted the same way).
    let trusted = format!("http://localhost:{port}");
    let http = reqwest::Client::new();
    let preflight = |origin: String| {
        http.request(Method::OPTIONS, node.url("/v1/tables/t"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    // The preflight carries no token, and is answered.
    let answer = preflight(trusted.clone()).await.unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    let headers = answer.headers();
    assert_eq!(headers["access-control-allow-origin"], trusted.as_str());
    let allowed = headers["access-control-allow-headers"].to_str().unwrap();
    for header in ["authorization", "content-type", "cairn-session", "cairn-seq", "last-event-id"] {
        assert!(allowed.contains(header), "{allowed}");
    }
    assert!(headers["access-control-allow-methods"].to_str().unwrap().contains("PATCH"));
    for foreign in ["http://evil.example", &format!("http://127.0.0.2:{}", port + 1), "null"] {
        let answer = preflight(foreign.to_string()).await.unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{foreign}");
        assert!(answer.headers().get("access-control-allow-origin").is_none());
    }
    // The call itself: answered with the origin allowed, and still checked
    // for its token.
    let (status, _) =
        node.with_headers(Method::PUT, "/v1/tables/t", "", &[("origin", trusted.as_str())]).await;
    assert_eq!(status, StatusCode::CREATED);
    let answer = http
        .get(node.url("/v1/tables"))
        .bearer_auth(common::ADMIN_TOKEN)
        .header("origin", trusted.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["access-control-allow-origin"], trusted.as_str());
    let answer =
        http.get(node.url("/v1/tables")).header("origin", trusted.as_str()).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    // The node's own origin needs no CORS headers.
    let own = format!("http://127.0.0.1:{port}");
    let answer = http
        .get(node.url("/v1/tables"))
        .bearer_auth(common::ADMIN_TOKEN)
        .header("origin", own)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(answer.headers().get("access-control-allow-origin").is_none());
    node.stop().await;
}

#[tokio::test]
async fn tables_are_listed_with_their_document_counts_when_asked() {
    let node = TestNode::start().await;
    for table in ["a", "b", "empty"] {
        let (status, _) = node.raw(Method::PUT, &format!("/v1/tables/{table}"), "").await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, _) =
        node.raw(Method::POST, "/v1/tables/a/docs", r#"[{"id":"1"},{"id":"2"},{"id":"3"}]"#).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = node.raw(Method::POST, "/v1/tables/b/docs", r#"{"id":"x"}"#).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = node.raw(Method::DELETE, "/v1/tables/a/docs/2", "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = node.raw(Method::GET, "/v1/tables?count=true", "").await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["tables"], serde_json::json!(["a", "b", "empty"]));
    assert_eq!(answer["counts"], serde_json::json!({"a": 2, "b": 1, "empty": 0}));
    let (_, body) = node.raw(Method::GET, "/v1/tables", "").await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert!(answer.get("counts").is_none(), "{answer}");
    node.refused(Method::GET, "/v1/tables?count=maybe", "", StatusCode::BAD_REQUEST, "bad_request")
        .await;
    node.stop().await;
}

#[tokio::test]
async fn a_login_code_is_traded_once_for_a_token_and_is_good_for_nothing_else() {
    let node = TestNode::start().await;
    let admin = node.client();
    let code =
        admin.create_login_code("console login", cairn_client::views::Role::Write).await.unwrap();
    let until = code.view.login_until_ms.expect("a login code says until when");
    assert!(until > code.view.created_ms, "{code:?}");
    // The code reads nothing, and the admin token cannot log in.
    let as_code = node.client_with(Some(&code.token));
    let refused = as_code.list_tables().await.unwrap_err();
    assert_eq!(refused.status(), Some(403), "{refused}");
    assert!(refused.to_string().contains("login code"), "{refused}");
    let refused = admin.login().await.unwrap_err();
    assert_eq!(refused.status(), Some(403), "{refused}");
    // Traded once: a token of the code's role, which works.
    let token = as_code.login().await.unwrap();
    assert_eq!(token.view.role, cairn_client::views::Role::Write);
    assert_eq!(token.view.login_until_ms, None);
    let user = node.client_with(Some(&token.token));
    // Write, not admin: no tables made, documents written.
    assert_eq!(user.create_table("t").await.unwrap_err().status(), Some(403));
    admin.create_table("t").await.unwrap();
    let doc = serde_json::json!({"id": "a"});
    user.insert("t", &doc, cairn_client::Conflict::Error).await.unwrap();
    assert_eq!(user.list_tables().await.unwrap(), ["t"]);
    // Never twice.
    let again = as_code.login().await.unwrap_err();
    assert_eq!(again.status(), Some(401), "{again}");
    // Only the token is listed now.
    let listed = admin.list_tokens().await.unwrap();
    let ids: Vec<&str> = listed.tokens.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [token.view.id.as_str()]);
    node.stop().await;
}
