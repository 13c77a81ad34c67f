// The body a replica gets from the llm-fleet gateway (nginx's njs module),
// when the gateway has a field to write into it:
//
// - `priority` (spec priority.enabled): the request's level, worked out by
//   nginx.conf in $fleet_priority (its key's class, lowered by an
//   X-Fleet-Priority header, never raised), as vLLM's `priority` (lower runs
//   first under --scheduling-policy priority). A client's own `priority` is
//   overwritten: the class is the operator's to give.
// - `stream_options.include_usage` (spec budgets.enabled): a chat or
//   completions stream then ends with the replica's usage, which usage.js
//   counts against the key's budget. When the client did not ask for it,
//   $fleet_usage_hidden tells usage.js to keep that chunk from the client,
//   which sees the stream it asked for.
//
// The body is in memory when the proxy builds the upstream request
// (client_body_buffer_size is the body limit, client_body_in_single_buffer
// is on). Bodies that are not a JSON object in UTF-8 pass unchanged: the
// replica answers them with its own 400, as without these settings. New
// fields are added before the closing brace and every other byte stays as
// the client sent it (no re-encoding of numbers or strings); only a field
// the client sent with another value makes the body re-encoded.

function has(object, name) {
    return Object.prototype.hasOwnProperty.call(object, name);
}

// The fields to write: name -> value, and whether a usage chunk the client
// did not ask for will come.
function edits(body, level, countUsage) {
    var fields = {};
    var hidden = false;
    if (level !== null) {
        fields.priority = level;
    }
    if (countUsage && body.stream === true) {
        var options = has(body, 'stream_options') ? body.stream_options : null;
        if (options === null) {
            fields.stream_options = {include_usage: true};
            hidden = true;
        } else if (typeof options === 'object' && !Array.isArray(options)
                   && options.include_usage !== true) {
            fields.stream_options = Object.assign({}, options, {include_usage: true});
            hidden = true;
        }
        // stream_options of another type: the replica's own 400.
    }
    return {fields: fields, hidden: hidden};
}

// ``text`` with the gateway's fields written in: {text, hidden}.
// ``level``: vLLM's priority, or null without classes; ``countUsage``: ask a
// stream for its usage.
function rewrite(text, level, countUsage) {
    var unchanged = {text: text, hidden: false};
    if (!text) {
        return unchanged;
    }
    var body;
    try {
        body = JSON.parse(text);
    } catch (e) {
        return unchanged;
    }
    if (!body || typeof body !== 'object' || Array.isArray(body)) {
        return unchanged;
    }
    var wanted = edits(body, level, countUsage);
    var names = Object.keys(wanted.fields);
    if (!names.length) {
        return unchanged;
    }
    if (names.some(function (name) { return has(body, name); })) {
        names.forEach(function (name) { body[name] = wanted.fields[name]; });
        return {text: JSON.stringify(body), hidden: wanted.hidden};
    }
    var added = names.map(function (name) {
        return JSON.stringify(name) + ':' + JSON.stringify(wanted.fields[name]);
    });
    var end = text.lastIndexOf('}');
    var separator = Object.keys(body).length ? ',' : '';
    return {text: text.slice(0, end) + separator + added.join(',') + text.slice(end),
            hidden: wanted.hidden};
}

// js_set $fleet_body
function body(r) {
    var buffer = r.requestBuffer;
    if (!buffer || !buffer.length) {
        // No body: njs has no buffer, and its requestText would read "undefined".
        return '';
    }
    var text;
    try {
        // Strict: njs would read invalid UTF-8 as bytes, parse it, and the
        // replica would get it back changed.
        text = new TextDecoder('utf-8', {fatal: true}).decode(buffer);
    } catch (e) {
        return r.requestText;
    }
    // nginx.conf's maps say which routes carry the class and which streams
    // are asked for their usage.
    var level = r.variables.fleet_classed === '1' ? Number(r.variables.fleet_priority) : null;
    var done = rewrite(text, level, r.variables.fleet_count_usage === '1');
    if (done.hidden) {
        r.variables.fleet_usage_hidden = '1';
    }
    return done.text;
}

export default {body, rewrite};
