"""The greet action of issue 23's example (with a 10 s cap), as the tests' --actions files
begin: one copy for the file's own tests, the API's, trun's, the page's and the stack's."""

GREET = r'''
[actions.greet]
description = "Greet someone"
args = ["/usr/bin/printf", "%s, %s!\n", "{greeting}", "{name}"]
timeout = 10

[actions.greet.params.greeting]
type = "string"
default = "hello"
max_length = 20

[actions.greet.params.name]
type = "string"
pattern = "^[A-Za-z][A-Za-z -]{0,39}$"
'''
