// The people directory (`people {q}`), cached: the server counts these requests
// with joins and history against a per-minute limit, so search-as-you-type
// must not cost a request per key. An answer with fewer than PEOPLE_LIMIT
// people holds everyone with that prefix, so any longer query is filtered
// from it locally.

const PEOPLE_LIMIT = 50;
const FRESH_MS = 30_000;

export class PeopleDirectory {
  constructor(conn) {
    this.conn = conn;
    this.answers = new Map(); // casefolded prefix -> {users, at}
  }

  // A rename or a new person makes cached answers wrong: ask again next time.
  forget() {
    this.answers.clear();
  }

  async search(query) {
    const q = query.trim().toLowerCase();
    const now = Date.now();
    for (const [prefix, answer] of this.answers) {
      if (now - answer.at > FRESH_MS) this.answers.delete(prefix);
      else if (q.startsWith(prefix) && (prefix === q || answer.users.length < PEOPLE_LIMIT)) {
        return answer.users.filter((user) => user.name.toLowerCase().startsWith(q));
      }
    }
    const frame = await this.conn.request({ type: "people", q });
    this.answers.set(q, { users: frame.users, at: Date.now() });
    return frame.users;
  }
}
