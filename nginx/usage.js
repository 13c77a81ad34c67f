// Counting each answer's tokens for the llm-fleet gateway's token budgets
// (nginx's njs module; spec budgets.enabled).
//
// `filter` sees every buffer a replica sends back on an inference route
// (js_body_filter) and keeps in $fleet_tokens the tokens the answer cost,
// which the access log carries to mtail and the controller's budget ledger
// (router/controller/budget.py):
//
// - the last `"total_tokens": N` of the replica's usage (prompt + completion):
//   a JSON answer's `usage`, a stream's final usage chunk (body.js asks for
//   it), a Responses stream's `response.completed`;
// - until then, the events streamed so far (about one per token): a client
//   that leaves mid-stream, or a stream cut, is counted at what it got,
//   never at zero.
//
// When body.js asked for a usage chunk the client did not ($fleet_usage_hidden),
// that event is taken out of the stream; the filter then passes whole events
// only (a replica writes each event at once, so nothing waits in practice).
//
// Each request has its own copy of this module's variables in njs.

// How much of the last buffer is searched again with the next one: a usage
// split between two buffers is still found.
var OVERLAP = 64;
var TOTAL = /"total_tokens":\s*([0-9]+)/g;
var EVENT = 'data: ';
var END = '\n\n';

var carry = '';
var events = 0;
var total = null;
var held = null;

// The last total_tokens in ``text``, or null. A quote in a string of the
// answer is escaped (\"), so only the usage object's own key matches.
function lastTotal(text) {
    var found = null;
    var match;
    TOTAL.lastIndex = 0;
    while ((match = TOTAL.exec(text)) !== null) {
        if (match.index === 0 || text[match.index - 1] !== '\\') {
            found = Number(match[1]);
        }
    }
    return found;
}

function count(text, what) {
    var n = 0;
    var at = text.indexOf(what);
    while (at !== -1) {
        n += 1;
        at = text.indexOf(what, at + what.length);
    }
    return n;
}

// ``data`` without the usage-only event of a stream (choices empty), if it
// holds one.
function withoutUsageEvent(data) {
    var at = data.indexOf('"choices":[]');
    if (at === -1) {
        return data;
    }
    var start = data.lastIndexOf(EVENT, at);
    var end = data.indexOf(END, at);
    if (start === -1 || end === -1 || data.indexOf('"usage":', start) > end) {
        return data;
    }
    return Buffer.concat([data.slice(0, start), data.slice(end + END.length)]);
}

// What one buffer adds to the count; returns the tokens so far.
function account(text) {
    var joined = carry + text;
    var found = lastTotal(joined);
    if (found !== null) {
        total = found;
    }
    events += count(text, EVENT);
    carry = joined.slice(-OVERLAP);
    return total !== null ? total : events;
}

// js_body_filter fleet_usage.filter buffer_type=buffer
function filter(r, data, flags) {
    var tokens = account(data.toString());
    r.variables.fleet_tokens = String(tokens);
    if (r.variables.fleet_usage_hidden !== '1') {
        r.sendBuffer(data, flags);
        return;
    }
    var pending = held === null ? data : Buffer.concat([held, data]);
    var cut = flags.last ? pending.length : pending.lastIndexOf(END) + END.length;
    if (cut < END.length) {
        cut = 0;
    }
    held = pending.slice(cut);
    r.sendBuffer(withoutUsageEvent(pending.slice(0, cut)), flags);
}

function reset() {
    carry = '';
    events = 0;
    total = null;
    held = null;
}

export default {filter, lastTotal, withoutUsageEvent, account, reset};
