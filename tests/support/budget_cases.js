// Runs the table of tests/fixtures/budget-cases.json through nginx/body.js,
// nginx/usage.js and nginx/flags.js under the njs interpreter and prints what
// they answer, one JSON document:
//   njs -p nginx tests/support/budget_cases.js tests/fixtures/budget-cases.json
// tests/unit/test_budget_njs.py compares it with the table.
import fs from 'fs';
import body from 'body.js';
import usage from 'usage.js';
import flags from 'flags.js';

var table = JSON.parse(fs.readFileSync(process.argv[process.argv.length - 1]));
var out = {bodies: [], answers: [], flags: []};

table.bodies.forEach(function (c) {
    out.bodies.push(body.rewrite(c.body, c.level, c.count_usage));
});
table.answers.forEach(function (c) {
    usage.reset();
    var sent = [];
    var r = {
        variables: {fleet_usage_hidden: c.hidden ? '1' : ''},
        sendBuffer: function (data, flags) { sent.push(data.toString()); },
    };
    c.buffers.forEach(function (text, i) {
        usage.filter(r, Buffer.from(text), {last: i === c.buffers.length - 1});
    });
    out.answers.push({sent: sent.join(''), tokens: Number(r.variables.fleet_tokens)});
});
table.flags.forEach(function (c) {
    var done = c.kind === 'budget' ? flags.budgetAnswer(c.text, c.now)
        : flags.shedAnswer(c.text, c.class);
    out.flags.push({status: done.status, retry: done.retry,
                    message: JSON.parse(done.body).error.message});
});
// console.log breaks lines longer than 2 KiB.
fs.writeFileSync('/dev/stdout', JSON.stringify(out) + '\n');
