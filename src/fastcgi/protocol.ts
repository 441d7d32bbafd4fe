// FastCGI 1.0 constants, named as in the specification (https://fastcgi-archives.github.io/FastCGI_Specification.html).

/** §3.3: the only version there is. */
export const FCGI_VERSION_1 = 1;
/** §3.3: every record starts with an 8-byte header. */
export const FCGI_HEADER_LEN = 8;
/** §3.3: contentLength is a 16-bit field. */
export const FCGI_MAX_CONTENT_LENGTH = 65535;
/** §2.2: a web server may hand the app its listening socket as file descriptor 0. */
export const FCGI_LISTENSOCK_FILENO = 0;
/** §3.3: management records (GET_VALUES, UNKNOWN_TYPE) use request id 0. */
export const FCGI_NULL_REQUEST_ID = 0;

// §8: record types.
export const FCGI_BEGIN_REQUEST = 1;
export const FCGI_ABORT_REQUEST = 2;
export const FCGI_END_REQUEST = 3;
export const FCGI_PARAMS = 4;
export const FCGI_STDIN = 5;
export const FCGI_STDOUT = 6;
export const FCGI_STDERR = 7;
export const FCGI_DATA = 8;
export const FCGI_GET_VALUES = 9;
export const FCGI_GET_VALUES_RESULT = 10;
export const FCGI_UNKNOWN_TYPE = 11;
export const FCGI_MAXTYPE = FCGI_UNKNOWN_TYPE;

// §5.1: FCGI_BeginRequestBody.flags.
export const FCGI_KEEP_CONN = 1;

// §6: roles.
export const FCGI_RESPONDER = 1;
export const FCGI_AUTHORIZER = 2;
export const FCGI_FILTER = 3;

// §5.5: FCGI_EndRequestBody.protocolStatus.
export const FCGI_REQUEST_COMPLETE = 0;
export const FCGI_CANT_MPX_CONN = 1;
export const FCGI_OVERLOADED = 2;
export const FCGI_UNKNOWN_ROLE = 3;

// §4.1: the variables a GET_VALUES query may ask for.
export const FCGI_MAX_CONNS = 'FCGI_MAX_CONNS';
export const FCGI_MAX_REQS = 'FCGI_MAX_REQS';
export const FCGI_MPXS_CONNS = 'FCGI_MPXS_CONNS';

export const recordTypeNames: Record<number, string> = {
  [FCGI_BEGIN_REQUEST]: 'BEGIN_REQUEST',
  [FCGI_ABORT_REQUEST]: 'ABORT_REQUEST',
  [FCGI_END_REQUEST]: 'END_REQUEST',
  [FCGI_PARAMS]: 'PARAMS',
  [FCGI_STDIN]: 'STDIN',
  [FCGI_STDOUT]: 'STDOUT',
  [FCGI_STDERR]: 'STDERR',
  [FCGI_DATA]: 'DATA',
  [FCGI_GET_VALUES]: 'GET_VALUES',
  [FCGI_GET_VALUES_RESULT]: 'GET_VALUES_RESULT',
  [FCGI_UNKNOWN_TYPE]: 'UNKNOWN_TYPE',
};

export function recordTypeName(type: number): string {
  return recordTypeNames[type] ?? `type ${type}`;
}

/** The codec's own error: anything the peer sent that breaks the protocol. */
export class FastCGIProtocolError extends Error {
  override name = 'FastCGIProtocolError';
  constructor(message: string) {
    super(`fastcgi: ${message}`);
  }
}
