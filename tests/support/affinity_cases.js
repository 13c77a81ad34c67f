// Runs the table of tests/fixtures/affinity-cases.json through nginx/affinity.js
// under the njs interpreter and prints what it answers, one JSON document:
//   njs -p nginx tests/support/affinity_cases.js tests/fixtures/affinity-cases.json
// tests/unit/test_affinity.py compares it with the table and with router/affinity.py.
import fs from 'fs';
import affinity from 'affinity.js';

function request(c) {
    var redirected = null;
    var r = {
        headersIn: c.headers || {},
        requestText: c.body,
        variables: {fleet_affinity_ring: c.ring, fleet_api: 'chat'},
        internalRedirect: function (to) { redirected = to; },
    };
    return {r: r, redirected: function () { return redirected; }};
}

var table = JSON.parse(fs.readFileSync(process.argv[process.argv.length - 1]));
var out = {keys: [], hashes: [], ranks: [], routes: []};

table.keys.forEach(function (c) {
    var found = affinity.find(request(c).r, c.mode === 'auto');
    out.keys.push({source: found[0], key: found[1]});
});
table.hashes.forEach(function (c) {
    out.hashes.push(affinity.hash(c.key, c.name));
});
table.ranks.forEach(function (c) {
    var first = affinity.rank(c.ring, c.key);
    out.ranks.push(first === null ? null : {name: first[0], state: first[1]});
});
table.routes.forEach(function (c) {
    var req = request(c);
    affinity[c.mode](req.r);
    out.routes.push({to: req.redirected(), label: req.r.variables.fleet_affinity,
                     upstream: req.r.variables.fleet_affinity_upstream || null});
});
console.log(JSON.stringify(out));
