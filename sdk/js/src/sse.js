// Server-sent events of GET /api/tasks/<id>/stream (see the Python SDK's sse.py
// for the theory of operation): `status`, `progress` ({"tokens": [...], "index"};
// the first of each connection replays all the text so far, `replayed: true`)
// and a final `done` event with the task view; ": keep-alive" comments every 15 s.
//
// Rules: the WHATWG event-stream format (lines end in \n, \r\n or \r; data lines
// join with \n; a blank line dispatches; comments and unknown fields are ignored;
// an event without data is dropped). Data that is not a JSON object is kept as
// {text}.

export class EventParser {
  constructor() {
    this.decoder = new TextDecoder();
    this.buffer = '';
    this.event = '';
    this.data = [];
  }

  /** Feed bytes (Uint8Array) or text; returns the events completed by it. */
  feed(chunk) {
    this.buffer += typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true });
    const events = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (!match) return events;
      if (match[0] === '\r' && match.index === this.buffer.length - 1) return events; // half of \r\n?
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const event = this.line(line);
      if (event) events.push(event);
    }
  }

  line(line) {
    if (line === '') {
      const kind = this.event || 'message';
      const data = this.data;
      this.event = '';
      this.data = [];
      return data.length ? { event: kind, data: parseData(data.join('\n')) } : null;
    }
    if (line.startsWith(':')) return null;
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (name === 'event') this.event = value;
    else if (name === 'data') this.data.push(value);
    return null;
  }
}

export function parseData(text) {
  try {
    const value = JSON.parse(text);
    return value && typeof value === 'object' && !Array.isArray(value) ? value : { value };
  } catch {
    return { text };
  }
}

// The end of a completed text task's result that the stream did not carry (a task
// that ended before the stream opened; progress events a slow reader lost), so
// that a stream's pieces always add up to the result; '' when there is nothing to
// add or the stream is not a prefix of it.
export function missedText(streamed, task) {
  if (!task || task.status !== 'completed' || typeof task.result !== 'string') return '';
  if ((task.content_type ?? 'text/plain') !== 'text/plain') return '';
  return task.result.startsWith(streamed) ? task.result.slice(streamed.length) : '';
}

/** The generated text pieces a `progress` event carries (none for other events). */
export function tokensOf(event) {
  if (event.event !== 'progress' || !Array.isArray(event.data.tokens)) return [];
  return event.data.tokens.filter((token) => typeof token === 'string');
}

// The text a task's stream yielded so far, across reconnects: pieces(event) is
// what an event adds (a replayed event, the first of every connection, carries
// everything so far: only its part not yielded yet), rest(task) what the final
// task adds.
export class TextAssembler {
  constructor() {
    this.text = '';
  }

  pieces(event) {
    let tokens = tokensOf(event);
    if (tokens.length && event.data.replayed === true) {
      const whole = tokens.join('');
      const added = whole.startsWith(this.text) ? whole.slice(this.text.length) : '';
      tokens = added ? [added] : [];
    }
    this.text += tokens.join('');
    return tokens;
  }

  rest(task) {
    const rest = missedText(this.text, task);
    this.text += rest;
    return rest;
  }
}
