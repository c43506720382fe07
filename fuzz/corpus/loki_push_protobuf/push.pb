
_
{app="web", env="prod"}+
ю├ои{GET /index 200
trace_idabc
ю├ои{second line