// Priority classes for the llm-fleet gateway (nginx's njs module).
//
// Loaded when the spec's priority.enabled is true. nginx.conf works out each
// request's level in $fleet_priority (its key's class, lowered by an
// X-Fleet-Priority header, never raised); this file writes that level into
// the body the replica gets, as vLLM's `priority` field (lower runs first
// under --scheduling-policy priority). A client's own `priority` is
// overwritten: the class is the operator's to give.
//
// The body is in memory when the proxy builds the upstream request
// (client_body_buffer_size is the body limit, client_body_in_single_buffer
// is on). Bodies that are not a JSON object in UTF-8 pass unchanged: the replica
// answers them with its own 400, as without classes. When the body has no
// `priority`, the field is added before the closing brace and every other
// byte stays as the client sent it (no re-encoding of numbers or strings).

function withPriority(text, level) {
    if (!text) {
        return text;
    }
    var body;
    try {
        body = JSON.parse(text);
    } catch (e) {
        return text;
    }
    if (!body || typeof body !== 'object' || Array.isArray(body)) {
        return text;
    }
    if (Object.prototype.hasOwnProperty.call(body, 'priority')) {
        body.priority = level;
        return JSON.stringify(body);
    }
    var end = text.lastIndexOf('}');
    var separator = Object.keys(body).length ? ',' : '';
    return text.slice(0, end) + separator + '"priority":' + level + text.slice(end);
}

// js_set $fleet_priority_body
function body(r) {
    var text;
    try {
        // Strict: njs would read invalid UTF-8 as bytes, parse it, and the
        // replica would get it back changed.
        text = new TextDecoder('utf-8', {fatal: true}).decode(r.requestBuffer);
    } catch (e) {
        return r.requestText;
    }
    return withPriority(text, Number(r.variables.fleet_priority));
}

export default {body, withPriority};
