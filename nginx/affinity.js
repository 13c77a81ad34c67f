// Conversation affinity for the llm-fleet gateway (nginx's njs module).
//
// Loaded when the spec's gateway.affinity is `session` or `auto`. Each API
// location that takes a body runs `session` or `auto` as its content handler:
// nginx has read the whole body into memory by then (client_body_buffer_size
// is the body limit), the handler finds the request's affinity key, ranks the
// replicas for it, and redirects to the location that proxies to the upstream
// of the replica ranked first (a key) or to the balanced one (no key, or the
// key's replica is shedding). nginx keeps the body across the redirect; the
// replica gets the request exactly as the client sent it.
//
// The ranking is weighted rendezvous hashing over $fleet_affinity_ring,
// which the controller renders with the upstream file (router/affinity.py's
// ring_text: "name weight state" per replica, state up, shed or down, joined
// by ';'; the same module is this file's reference model): the replica with the highest
// weight / -ln(hash(key, name)) wins. A replica that goes down moves only its
// own keys (each to its next in rank), and they come back when it does. A
// shedding replica (the load bound) keeps its keys, but their requests go to
// the balanced upstream one by one until it recovers: a hot key spills over
// the fleet instead of moving whole onto one neighbour.
//
// The key, first found wins:
//   1. the X-Session-Id header;
//   2. the body's prompt_cache_key, then its user (the OpenAI fields);
//   3. auto only: a digest of the conversation's opening (the messages up to
//      and including the first user message; for /v1/responses the
//      instructions and the input up to its first user message), or of a
//      prompt's first block.
// A body that is not a JSON object, or has none of these, has no key.
// $fleet_affinity says which one was used (session, prompt_cache_key, user,
// opening, none), with " spilled" when its replica was shedding; the key
// itself is never logged.

var crypto = require('crypto');

// Longer client keys are cut: a key is an identity, not a payload.
var MAX_KEY_CHARS = 256;
// A completion prompt's "first block": enough to cover a long shared
// instruction, the way a chat's system prompt is covered.
var PROMPT_BLOCK_CHARS = 4096;

function clip(value) {
    return value.length > MAX_KEY_CHARS ? value.slice(0, MAX_KEY_CHARS) : value;
}

function digest(text) {
    return crypto.createHash('sha1').update(text).digest('base64url');
}

// The text of a message's content: a string, or the text of its parts.
function contentText(content) {
    if (typeof content === 'string') {
        return content;
    }
    if (!Array.isArray(content)) {
        return '';
    }
    var texts = [];
    for (var i = 0; i < content.length; i++) {
        var part = content[i];
        if (part && typeof part.text === 'string') {
            texts.push(part.text);
        }
    }
    return texts.join('\n');
}

// The messages up to and including the first user message, after `parts`
// already opened: the same for every turn of one conversation.
function untilFirstUser(messages, parts) {
    for (var i = 0; i < messages.length; i++) {
        var message = messages[i];
        if (!message || typeof message !== 'object') {
            return '';
        }
        parts.push(String(message.role) + '\u0000' + contentText(message.content));
        if (message.role === 'user') {
            return parts.join('\u0001');
        }
    }
    return '';
}

function opening(body) {
    if (Array.isArray(body.messages)) {
        return untilFirstUser(body.messages, []);
    }
    if (body.input !== undefined) {
        // The Responses API: instructions play the system prompt's part.
        var parts = typeof body.instructions === 'string' && body.instructions
            ? ['system\u0000' + body.instructions] : [];
        if (typeof body.input === 'string') {
            return body.input ? untilFirstUser([{role: 'user', content: body.input}], parts)
                : '';
        }
        return Array.isArray(body.input) ? untilFirstUser(body.input, parts) : '';
    }
    if (typeof body.prompt === 'string' && body.prompt) {
        return body.prompt.slice(0, PROMPT_BLOCK_CHARS);
    }
    return '';
}

function find(r, auto) {
    var header = r.headersIn['X-Session-Id'];
    if (header) {
        return ['session', 's:' + clip(header)];
    }
    var text = r.requestText;
    if (!text) {
        return ['none', ''];
    }
    var body;
    try {
        body = JSON.parse(text);
    } catch (e) {
        return ['none', ''];
    }
    if (!body || typeof body !== 'object' || Array.isArray(body)) {
        return ['none', ''];
    }
    if (typeof body.prompt_cache_key === 'string' && body.prompt_cache_key) {
        return ['prompt_cache_key', 'k:' + clip(body.prompt_cache_key)];
    }
    if (typeof body.user === 'string' && body.user) {
        return ['user', 'u:' + clip(body.user)];
    }
    if (!auto) {
        return ['none', ''];
    }
    var start = opening(body);
    return start ? ['opening', 'o:' + digest(start)] : ['none', ''];
}

// FNV-1a over the key and the replica's name, then murmur3's finaliser: an
// even spread for keys that differ in one character.
function hash(key, name) {
    var h = 2166136261;
    var text = key + '\u0000' + name;
    for (var i = 0; i < text.length; i++) {
        h = Math.imul(h ^ text.charCodeAt(i), 16777619);
    }
    h = Math.imul(h ^ (h >>> 16), 2246822507);
    h = Math.imul(h ^ (h >>> 13), 3266489909);
    return ((h ^ (h >>> 16)) >>> 0);
}

// The replica ranked first for `key` among those not down: [name, state].
function rank(ring, key) {
    var best = null;
    var bestScore = -1;
    var entries = ring ? ring.split(';') : [];
    for (var i = 0; i < entries.length; i++) {
        var fields = entries[i].split(' ');
        var weight = Number(fields[1]);
        if (fields[2] === 'down' || !(weight > 0)) {
            continue;
        }
        var unit = (hash(key, fields[0]) + 0.5) / 4294967296;
        var score = weight / -Math.log(unit);
        if (score > bestScore) {
            bestScore = score;
            best = [fields[0], fields[2]];
        }
    }
    return best;
}

function route(r, auto) {
    var found = find(r, auto);
    var first = found[1] ? rank(r.variables.fleet_affinity_ring, found[1]) : null;
    var spilled = first !== null && first[1] === 'shed';
    r.variables.fleet_affinity = found[0] + (spilled ? ' spilled' : '');
    if (first === null || spilled) {
        r.internalRedirect('@' + r.variables.fleet_api + '_balanced');
        return;
    }
    r.variables.fleet_affinity_upstream = 'fleet_' + first[0];
    r.internalRedirect('@' + r.variables.fleet_api + '_affinity');
}

function session(r) {
    route(r, false);
}

function auto(r) {
    route(r, true);
}

// find, rank and hash are the table tests' entry points
// (tests/unit/test_affinity.py runs them under the njs interpreter).
export default {session, auto, find, rank, hash};
