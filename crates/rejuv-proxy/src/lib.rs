//! rejuv builtin proxy: an HTTP/1.1 front end that drains, holds and retries so switchovers drop no request.
