// The controller's flags, as the llm-fleet gateway answers them (nginx's njs
// module). The controller writes them into a folder nginx tests with `-f`
// before any limit counts a request (router/controller/admission.py and
// budget.py); this file only reads them to answer, or to tell nginx a share:
//
// - `shed`: a request of a class shed for the fleet's saturation
//   (priority.shed_queue_wait_s): 503 with the flag's Retry-After and reason.
// - `overBudget`: a request of an API key over its tokens per minute
//   (budgets): 429 with a Retry-After until the flag's time, the tokens used
//   and the budget; `budgetCap`: how many requests a key near it may have in
//   flight.
// - `fairShare`: the requests each key may have in flight now
//   (priority.fair_share).

import fs from 'fs';

function readFlag(path) {
    try {
        return fs.readFileSync(path, 'utf8');
    } catch (e) {
        // the controller lifted the flag since nginx tested it
        return '';
    }
}

// The answer to a flagged request, from the flag's text (it may be gone or
// half-read by now: a second then, with the generic reason in ``fallback``).
// ``message(flag)`` says what happened from the flag's fields (and may work
// out its retry_after_s).
function flagAnswer(flagText, status, type, message, fallback) {
    var flag = {};
    try {
        flag = JSON.parse(flagText) || {};
    } catch (e) {
        flag = {};
    }
    var said = message(flag) || fallback;
    var retry = flag.retry_after_s >= 1 ? Math.round(flag.retry_after_s) : 1;
    return {status: status, retry: retry, body: JSON.stringify({error: {
        message: said + '; retry after the seconds in the Retry-After header',
        type: type, param: null, code: status}}) + '\n'};
}

function shedAnswer(flagText, className) {
    return flagAnswer(flagText, 503, 'ServiceUnavailableError', function (flag) {
        var reason = typeof flag.reason === 'string' ? flag.reason : 'the fleet is saturated';
        return 'the fleet is full for priority class ' + className + ' (' + reason + ')';
    });
}

// The flag says until when (epoch seconds) the key's last minute holds its
// budget: the Retry-After is the time left.
function budgetAnswer(flagText, nowS) {
    return flagAnswer(flagText, 429, 'RateLimitError', function (flag) {
        flag.retry_after_s = Math.ceil(flag.until - nowS);
        if (!(flag.used >= 0 && flag.budget >= 1)) {
            return null;
        }
        var said = 'this API key used ' + flag.used + ' of its ' + flag.budget +
            ' tokens per minute (prompt and completion)';
        if (flag.used < flag.budget && flag.answer >= 1) {
            said += '; answers are charged before they start, at this key\'s average of ' +
                flag.answer + ' tokens';
        }
        return said;
    }, 'this API key is over its tokens per minute');
}

function answer(r, done) {
    r.headersOut['Content-Type'] = 'application/json';
    r.headersOut['Retry-After'] = String(done.retry);
    r.headersOut['X-Request-Id'] = r.variables.request_id;
    r.return(done.status, done.body);
}

// js_content for the shed named location.
function shed(r) {
    var className = r.variables.fleet_class;
    answer(r, shedAnswer(readFlag(r.variables.fleet_shed_dir + '/' + className), className));
}

// js_content for the over-budget named location.
function overBudget(r) {
    answer(r, budgetAnswer(readFlag(r.variables.fleet_budget_dir + '/' +
                                    r.variables.fleet_api_key), Date.now() / 1000));
}

// js_set $fleet_budget_cap_file: the requests a key near its token budget
// may have in flight (budgets), from its file; "" when it has none.
function budgetCap(r) {
    var text = readFlag(r.variables.fleet_budget_dir + '/cap/' + r.variables.fleet_api_key);
    text = text.trim();
    return /^[0-9]+$/.test(text) ? text : '';
}

// js_set $fleet_fair_share: the requests each key may have in flight now
// (priority.fair_share), or "" while no share applies.
function fairShare(r) {
    var text = readFlag(r.variables.fleet_fair_file).trim();
    return /^[0-9]+$/.test(text) ? text : '';
}

export default {shed, shedAnswer, overBudget, budgetAnswer, budgetCap, fairShare};
