//! The JSON routes, read from the `google.api.http` options of the service's methods in the
//! compiled descriptor: the proto is their only declaration. Supported templates are literal
//! segments, single-segment `{field}` variables naming a string field of the request, and an
//! optional `:verb`; a body of `*` or none. Anything else is refused at start-up.

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};

/// The option that maps an RPC to HTTP.
const HTTP_OPTION: &str = "google.api.http";

/// One HTTP binding of an RPC.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// `GET`, `POST`, ...
    pub method: http::Method,
    /// The path template as the proto writes it, e.g. `/v1/instances/{db_instance_id}/engineVersion`;
    /// the `http.route` of spans and metrics.
    pub template: String,
    segments: Vec<Segment>,
    verb: Option<String>,
    /// The request message comes from the body (`body: "*"`), else from the query string.
    pub body: bool,
    /// The gRPC path of the RPC, e.g. `/dds.gateway.v1.EngineVersionService/GetEngineVersion`.
    pub grpc_path: String,
    pub grpc_uri: http::Uri,
    pub input: MessageDescriptor,
    pub output: MessageDescriptor,
    /// The RPC streams its answers (newline-delimited JSON over HTTP).
    pub streaming: bool,
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    Field(FieldDescriptor),
}

/// What a request's method and path select.
#[derive(Debug)]
pub(crate) enum Selected<'a> {
    Route {
        route: &'a Route,
        /// The path's variables, percent-decoded, with the fields they set.
        bound: Vec<(FieldDescriptor, String)>,
    },
    /// The path is a route's, the method none of its.
    MethodNotAllowed {
        allowed: Vec<http::Method>,
    },
    NotFound,
}

/// Why the routes could not be read from the descriptor.
#[derive(Debug, thiserror::Error)]
#[error("JSON routes of {service}: {reason}")]
pub(crate) struct RouteError {
    service: String,
    reason: String,
}

/// Every HTTP binding of one service.
#[derive(Debug, Clone)]
pub(crate) struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    #[cfg(test)]
    /// The bindings of `service` (a full name) in the encoded file descriptor set `descriptor`.
    pub(crate) fn from_descriptor(descriptor: &[u8], service: &str) -> Result<Self, RouteError> {
        Self::from_services(descriptor, &[service])
    }

    /// The bindings of every service of `package` in `descriptor` that declares any: the
    /// annotations alone decide which RPCs have JSON routes.
    pub(crate) fn of_package(descriptor: &[u8], package: &str) -> Result<Self, RouteError> {
        let pool = DescriptorPool::decode(descriptor).map_err(|e| RouteError {
            service: package.to_string(),
            reason: format!("unreadable descriptor: {e}"),
        })?;
        let option = pool.get_extension_by_name(HTTP_OPTION);
        let services: Vec<String> = pool
            .services()
            .filter(|s| s.package_name() == package)
            .filter(|s| {
                option
                    .as_ref()
                    .is_some_and(|o| s.methods().any(|m| m.options().has_extension(o)))
            })
            .map(|s| s.full_name().to_string())
            .collect();
        let names: Vec<&str> = services.iter().map(String::as_str).collect();
        Self::from_services(descriptor, &names)
    }

    /// The bindings of `services` (full names), checked together for ambiguity.
    fn from_services(descriptor: &[u8], services: &[&str]) -> Result<Self, RouteError> {
        let all = services.join(", ");
        let fail_all = |reason: String| RouteError {
            service: all.clone(),
            reason,
        };
        let pool = DescriptorPool::decode(descriptor)
            .map_err(|e| fail_all(format!("unreadable descriptor: {e}")))?;
        let option = pool
            .get_extension_by_name(HTTP_OPTION)
            .ok_or_else(|| fail_all(format!("the descriptor lacks {HTTP_OPTION}")))?;
        let mut routes = Vec::new();
        for service in services {
            let fail = |reason: String| RouteError {
                service: service.to_string(),
                reason,
            };
            let service_descriptor = pool
                .get_service_by_name(service)
                .ok_or_else(|| fail("no such service in the descriptor".to_string()))?;
            for method in service_descriptor.methods() {
                let options = method.options();
                if !options.has_extension(&option) {
                    continue;
                }
                let Value::Message(rule) = options.get_extension(&option).into_owned() else {
                    return Err(fail(format!(
                        "{}: {HTTP_OPTION} is no HttpRule",
                        method.name()
                    )));
                };
                routes.push(
                    route(&method, &rule)
                        .map_err(|reason| fail(format!("{}: {reason}", method.name())))?,
                );
            }
        }
        if routes.is_empty() {
            return Err(fail_all(format!("no method has a {HTTP_OPTION} option")));
        }
        let table = Self { routes };
        table.check_unambiguous().map_err(fail_all)?;
        Ok(table)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The route for `method` and `path` (still percent-encoded), or why there is none.
    pub(crate) fn select(&self, method: &http::Method, path: &str) -> Selected<'_> {
        let mut allowed = Vec::new();
        for route in &self.routes {
            if let Some(bound) = route.matches(path) {
                if route.method == *method {
                    return match bound {
                        Some(bound) => Selected::Route { route, bound },
                        None => Selected::NotFound,
                    };
                }
                allowed.push(route.method.clone());
            }
        }
        if allowed.is_empty() {
            Selected::NotFound
        } else {
            Selected::MethodNotAllowed { allowed }
        }
    }

    /// Two routes with one method must never match the same path.
    fn check_unambiguous(&self) -> Result<(), String> {
        for (i, a) in self.routes.iter().enumerate() {
            for b in &self.routes[i + 1..] {
                let overlap = a.method == b.method
                    && a.verb == b.verb
                    && a.segments.len() == b.segments.len()
                    && a.segments.iter().zip(&b.segments).all(|pair| match pair {
                        (Segment::Literal(x), Segment::Literal(y)) => x == y,
                        _ => true,
                    });
                if overlap {
                    return Err(format!(
                        "{} {} and {} {} match the same paths",
                        a.method, a.template, b.method, b.template
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Route {
    /// `Some(Some(variables))` when `path` fits the template and its variables decode;
    /// `Some(None)` when it fits but a variable is not UTF-8; `None` when it does not fit.
    fn matches(&self, path: &str) -> Option<Option<Vec<(FieldDescriptor, String)>>> {
        let mut segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        if segments.len() != self.segments.len() {
            return None;
        }
        // The verb follows the last ':' of the last segment.
        let last = segments.last_mut()?;
        let verb = match last.rsplit_once(':') {
            Some((rest, verb)) => {
                *last = rest;
                Some(verb)
            }
            None => None,
        };
        if verb != self.verb.as_deref() {
            return None;
        }
        let mut bound = Vec::new();
        for (segment, template) in segments.into_iter().zip(&self.segments) {
            match template {
                Segment::Literal(literal) if literal == segment => {}
                Segment::Field(field) if !segment.is_empty() => {
                    bound.push((field.clone(), segment))
                }
                _ => return None,
            }
        }
        let decoded = bound
            .into_iter()
            .map(|(field, raw)| {
                percent_encoding::percent_decode_str(raw)
                    .decode_utf8()
                    .ok()
                    .map(|value| (field, value.into_owned()))
            })
            .collect();
        Some(decoded)
    }
}

/// One route from an `HttpRule`.
fn route(method: &MethodDescriptor, rule: &DynamicMessage) -> Result<Route, String> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let mut bindings = [
        (http::Method::GET, "get"),
        (http::Method::PUT, "put"),
        (http::Method::POST, "post"),
        (http::Method::DELETE, "delete"),
        (http::Method::PATCH, "patch"),
    ]
    .into_iter()
    .filter(|(_, name)| rule.has_field_by_name(name));
    let Some((http_method, name)) = bindings.next() else {
        return Err("only get, put, post, delete and patch bindings are supported".to_string());
    };
    let template = text(name);
    let body = match text("body").as_str() {
        "" => false,
        "*" => true,
        other => return Err(format!("body {other:?}: only \"*\" or none is supported")),
    };
    if !text("response_body").is_empty() {
        return Err("response_body is not supported".to_string());
    }
    // One route per method: nothing here uses more, so nothing would test them.
    if rule.has_field_by_name("additional_bindings") {
        return Err("additional_bindings are not supported".to_string());
    }
    let input = method.input();
    let (segments, verb) = parse_template(&template, &input)?;
    let grpc_path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let grpc_uri = grpc_path
        .parse()
        .map_err(|e| format!("{grpc_path} is no URI path: {e}"))?;
    Ok(Route {
        method: http_method,
        template,
        segments,
        verb,
        body,
        grpc_path,
        grpc_uri,
        input,
        output: method.output(),
        streaming: method.is_server_streaming(),
    })
}

fn parse_template(
    template: &str,
    input: &MessageDescriptor,
) -> Result<(Vec<Segment>, Option<String>), String> {
    let path = template
        .strip_prefix('/')
        .ok_or_else(|| format!("template {template:?} does not start with '/'"))?;
    let (path, verb) = match path.rsplit_once(':') {
        Some((path, verb)) if !verb.contains(['/', '}']) => (path, Some(verb.to_string())),
        _ => (path, None),
    };
    let unsupported =
        || format!("template {template:?}: only literals and {{field}} are supported");
    let mut segments = Vec::new();
    for segment in path.split('/') {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let field = input.get_field_by_name(name).ok_or_else(|| {
                format!(
                    "template {template:?}: {name} is no field of {}",
                    input.name()
                )
            })?;
            if field.is_list() || field.is_map() || field.kind() != Kind::String {
                return Err(format!(
                    "template {template:?}: {name} must be a singular string field"
                ));
            }
            segments.push(Segment::Field(field));
        } else if segment.is_empty() || segment.contains(['{', '}', '*', ':']) {
            return Err(unsupported());
        } else {
            segments.push(Segment::Literal(segment.to_string()));
        }
    }
    if verb
        .as_deref()
        .is_some_and(|v| v.is_empty() || v.contains(['{', '*']))
    {
        return Err(unsupported());
    }
    Ok((segments, verb))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        Routes::from_descriptor(
            crate::pb::FILE_DESCRIPTOR_SET,
            crate::api::service::SERVICE_NAME,
        )
        .unwrap()
    }

    /// The table is the proto's annotations, nothing else: one route per annotated RPC, with the
    /// template, method, body and RPC the proto names (this is the HTTP routes contract).
    #[test]
    fn the_table_is_the_protos_annotations() {
        let table: Vec<_> = routes()
            .iter()
            .map(|r| {
                (
                    r.method.to_string(),
                    r.template.clone(),
                    r.body,
                    r.grpc_path.clone(),
                    r.streaming,
                )
            })
            .collect();
        let service = "/dds.gateway.v1.EngineVersionService";
        assert_eq!(
            table,
            [
                (
                    "POST".to_string(),
                    "/v1/instances/{db_instance_id}:upgradeEngineVersion".to_string(),
                    true,
                    format!("{service}/UpgradeEngineVersion"),
                    false
                ),
                (
                    "GET".to_string(),
                    "/v1/instances/{db_instance_id}/engineVersion".to_string(),
                    false,
                    format!("{service}/GetEngineVersion"),
                    false
                ),
                (
                    "GET".to_string(),
                    "/v1/instances/{db_instance_id}/engineVersion:watch".to_string(),
                    false,
                    format!("{service}/WatchUpgrade"),
                    true
                ),
                (
                    "GET".to_string(),
                    "/v1/caller".to_string(),
                    false,
                    format!("{service}/GetCaller"),
                    false
                ),
                (
                    "GET".to_string(),
                    "/v1/engineVersions".to_string(),
                    false,
                    format!("{service}/ListEngineVersions"),
                    false
                ),
                (
                    "GET".to_string(),
                    "/v1/activity".to_string(),
                    false,
                    format!("{service}/ListActivity"),
                    false
                ),
                (
                    "GET".to_string(),
                    "/v1/instances".to_string(),
                    false,
                    format!("{service}/ListInstances"),
                    false
                ),
            ]
        );
        // Every RPC of the service is reachable over HTTP.
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let service = pool
            .get_service_by_name(crate::api::service::SERVICE_NAME)
            .unwrap();
        assert_eq!(service.methods().len(), table.len());
    }

    fn selected(method: http::Method, path: &str) -> Result<(String, Vec<String>), String> {
        match routes().select(&method, path) {
            Selected::Route { route, bound } => Ok((
                route.grpc_path.rsplit('/').next().unwrap().to_string(),
                bound
                    .into_iter()
                    .map(|(f, v)| format!("{}={v}", f.name()))
                    .collect(),
            )),
            Selected::MethodNotAllowed { allowed } => Err(format!("405 {allowed:?}")),
            Selected::NotFound => Err("404".to_string()),
        }
    }

    #[test]
    fn paths_select_their_rpc_and_bind_variables() {
        let upgrade = "/v1/instances/dds-bp1:upgradeEngineVersion";
        assert_eq!(
            selected(http::Method::POST, upgrade).unwrap(),
            (
                "UpgradeEngineVersion".into(),
                vec!["db_instance_id=dds-bp1".into()]
            )
        );
        assert_eq!(
            selected(http::Method::GET, "/v1/instances/dds-bp1/engineVersion")
                .unwrap()
                .0,
            "GetEngineVersion"
        );
        assert_eq!(
            selected(
                http::Method::GET,
                "/v1/instances/dds-bp1/engineVersion:watch"
            )
            .unwrap()
            .0,
            "WatchUpgrade"
        );
        // Percent-encoded variables are decoded (validation judges the value).
        assert_eq!(
            selected(http::Method::GET, "/v1/instances/a%2Fb/engineVersion")
                .unwrap()
                .1,
            vec!["db_instance_id=a/b".to_string()]
        );
        assert_eq!(
            selected(http::Method::GET, upgrade).unwrap_err(),
            "405 [POST]"
        );
        assert_eq!(
            selected(http::Method::DELETE, "/v1/instances/x/engineVersion").unwrap_err(),
            "405 [GET]"
        );
        assert_eq!(
            selected(http::Method::GET, "/v1/instances").unwrap(),
            ("ListInstances".into(), vec![])
        );
        assert_eq!(
            selected(http::Method::POST, "/v1/instances").unwrap_err(),
            "405 [GET]"
        );
        for path in [
            "/",
            "/v1/instances/",
            "/v1/instances/x",
            "/v1/instances//engineVersion",
            "/v1/instances/x/engineVersion/",
            "/v1/instances/x/engineVersion:stop",
            "/v1/instances/x:upgrade",
            "/v1/instances/x/y/engineVersion",
            "/v2/instances/x/engineVersion",
            "/dds.gateway.v1.EngineVersionService/GetEngineVersion",
            "/v1/instances/%FF/engineVersion",
        ] {
            assert_eq!(
                selected(http::Method::GET, path).unwrap_err(),
                "404",
                "{path}"
            );
        }
    }

    #[test]
    fn unsupported_templates_are_refused() {
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let input = pool
            .get_message_by_name("dds.gateway.v1.UpgradeEngineVersionRequest")
            .unwrap();
        for template in [
            "v1/x",
            "/v1/{db_instance_id=*}",
            "/v1/**",
            "/v1/{nope}",
            "/v1/{validate_only}",
            "/v1//x",
        ] {
            assert!(parse_template(template, &input).is_err(), "{template}");
        }
        let (segments, verb) = parse_template("/v1/{db_instance_id}:go", &input).unwrap();
        assert_eq!(segments.len(), 2);
        assert_eq!(verb.as_deref(), Some("go"));
    }

    /// Every annotated service of the package is routed: the rollout routes of DESIGN.md
    /// ("Fleet rollouts") come from `rollout.proto`'s annotations, beside the engine service's.
    #[test]
    fn the_package_table_holds_every_services_routes() {
        let table = Routes::of_package(crate::pb::FILE_DESCRIPTOR_SET, crate::pb::PACKAGE).unwrap();
        let pick = |method: http::Method, path: &str| match table.select(&method, path) {
            Selected::Route { route, bound } => (
                route.grpc_path.clone(),
                bound.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
                route.streaming,
            ),
            other => panic!("{method} {path}: {other:?}"),
        };
        let rollouts = "/dds.gateway.v1.RolloutService";
        assert_eq!(
            pick(http::Method::POST, "/v1/rollouts:plan").0,
            format!("{rollouts}/PlanRollout")
        );
        assert_eq!(
            pick(http::Method::POST, "/v1/rollouts").0,
            format!("{rollouts}/StartRollout")
        );
        assert_eq!(
            pick(http::Method::GET, "/v1/rollouts").0,
            format!("{rollouts}/ListRollouts")
        );
        assert_eq!(
            pick(http::Method::GET, "/v1/rollouts/r1"),
            (
                format!("{rollouts}/GetRollout"),
                vec!["r1".to_string()],
                false
            )
        );
        assert_eq!(
            pick(http::Method::GET, "/v1/rollouts/r1:watch"),
            (
                format!("{rollouts}/WatchRollout"),
                vec!["r1".to_string()],
                true
            )
        );
        for verb in ["pause", "resume", "cancel", "approve"] {
            let (path, bound, _) = pick(http::Method::POST, &format!("/v1/rollouts/r1:{verb}"));
            assert!(
                path.to_lowercase().ends_with(&format!("/{verb}rollout")),
                "{path}"
            );
            assert_eq!(bound, vec!["r1".to_string()]);
        }
        assert_eq!(
            pick(http::Method::POST, "/v1/rollouts/r1/instances/dds-a:retry").1,
            vec!["r1".to_string(), "dds-a".to_string()]
        );
        assert_eq!(
            pick(http::Method::GET, "/v1/instances/dds-a/engineVersion").0,
            "/dds.gateway.v1.EngineVersionService/GetEngineVersion"
        );
        assert!(matches!(
            table.select(&http::Method::DELETE, "/v1/rollouts/r1"),
            Selected::MethodNotAllowed { .. }
        ));
    }
}
