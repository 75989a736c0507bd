// A placeholder: the board's script is being written (DESIGN §9). It talks
// to the server through the JSON view: POST /api/<service>/<Method> with
// the proto3 JSON of the request and an Authorization: Bearer header.
"use strict";
