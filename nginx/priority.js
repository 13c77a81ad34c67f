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
//
// `shed` answers a request of a class the controller sheds for the fleet's
// saturation (priority.shed_queue_wait_s): nginx.conf found the class's flag
// file, which holds the Retry-After and the controller's reason.

import fs from 'fs';

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

// The answer to a shed request, from the flag file's text (it may be gone
// or half-read by now: a second then, with a generic reason).
function shedAnswer(flagText, className) {
    var retry = 1;
    var reason = 'the fleet is saturated';
    try {
        var flag = JSON.parse(flagText);
        if (flag.retry_after_s >= 1) {
            retry = Math.round(flag.retry_after_s);
        }
        if (typeof flag.reason === 'string') {
            reason = flag.reason;
        }
    } catch (e) {
        // keep the defaults
    }
    var message = 'the fleet is full for priority class ' + className + ' (' + reason +
        '); retry after the seconds in the Retry-After header';
    return {retry: retry, body: JSON.stringify({error: {message: message,
        type: 'ServiceUnavailableError', param: null, code: 503}}) + '\n'};
}

// js_content for the shed named location.
function shed(r) {
    var className = r.variables.fleet_class;
    var text = '';
    try {
        text = fs.readFileSync(r.variables.fleet_shed_dir + '/' + className, 'utf8');
    } catch (e) {
        // the controller let the class back in since nginx tested the flag
    }
    var answer = shedAnswer(text, className);
    r.headersOut['Content-Type'] = 'application/json';
    r.headersOut['Retry-After'] = String(answer.retry);
    r.headersOut['X-Request-Id'] = r.variables.request_id;
    r.return(503, answer.body);
}

// js_set $fleet_fair_share: the requests each key may have in flight now
// (priority.fair_share), or "" while no share applies.
function fairShare(r) {
    try {
        var text = fs.readFileSync(r.variables.fleet_fair_file, 'utf8').trim();
        return /^[0-9]+$/.test(text) ? text : '';
    } catch (e) {
        return '';
    }
}

export default {body, withPriority, shed, shedAnswer, fairShare};
