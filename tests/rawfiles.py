"""Writers of small raw files in each source's real layout (tests never commit dataset copies)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from tcf.data.sources.mind import NEWS_COLUMNS
from tcf.data.sources.ml100k import GENRES

# A tiny MovieLens: 4 users x 5 movies.  (user, item, rating, timestamp) in file order.
ML_RATINGS = [
    (1, 1, 5, 100), (1, 2, 3, 100), (1, 3, 4, 90), (1, 4, 2, 110),
    (2, 2, 4, 50), (2, 5, 1, 60), (2, 1, 5, 70),
    (3, 3, 2, 10), (3, 4, 3, 20), (3, 5, 4, 20), (3, 1, 1, 30),
    (4, 5, 3, 5), (4, 4, 3, 6), (4, 2, 1, 7),
]
ML_MOVIES = [
    (1, "Toy Story (1995)", "01-Jan-1995", ["Animation", "Children's", "Comedy"]),
    (2, "GoldenEye (1995)", "01-Jan-1995", ["Action", "Adventure", "Thriller"]),
    (3, "Misérables, Les (1995)", "01-Jan-1995", ["Drama"]),
    (4, "unknown", "", ["unknown"]),
    (5, "Land Before Time III: The Time of the Great Giving (1995) (V)", "01-Jan-1995", ["Animation"]),
]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def grouplens(folder: Path, ratings=ML_RATINGS, movies=ML_MOVIES, encoding="latin-1") -> Path:
    write(folder / "u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings))
    lines = []
    for mid, title, date, genres in movies:
        flags = "|".join("1" if g in genres else "0" for g in GENRES)
        lines.append(f"{mid}|{title}|{date}||http://example.invalid/{mid}|{flags}\n")
    write(folder / "u.item", "".join(lines), encoding=encoding)
    return folder


def grouplens_zip(path: Path, tmp: Path) -> Path:
    folder = grouplens(tmp / "src" / "ml-100k")
    with zipfile.ZipFile(path, "w") as z:
        for name in ("u.data", "u.item"):
            z.write(folder / name, f"ml-100k/{name}")
    return path


def recbole(folder: Path, ratings=ML_RATINGS) -> Path:
    write(folder / "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
          + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings))
    rows = [(1, "Toy Story", "1995", "Animation Children's Comedy"), (2, "GoldenEye", "1995", "Action Adventure"),
            (3, "Misérables, Les", "1995", "Drama"), (4, "unkonwn", "unkonwn", "unknown"),
            (5, "Land Before Time III: The Time of the Great Giving (1995)", "V", "Animation")]
    write(folder / "ml-100k.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
          + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return folder


def tcf_tsv(folder: Path, kind="news") -> Path:
    """The reference layout: header lines, tokens in time order."""
    id_col, text_col, table = {"news": ("newsid", "title", "news.tsv"), "items": ("itemid", "description", "items.tsv"),
                               "videos": ("videoid", "description", "videos.tsv")}[kind]
    write(folder / table, f"{id_col}\t{text_col}\n"
          "N10\tFirst row of the item table\nN20\tSecond item\nN30\tThird item\nN40\tFourth item\n")
    write(folder / "behaviors.tsv", "userid\tbehaviors\n"
          "U1\tN20 N10 N30\nU2\tN40 N30 N20 N10\nU3\tN10 N40 N20\n")
    return folder


def mind(folder: Path) -> Path:
    news = [("N1", "sports", "football", "Team wins the cup", "An abstract.", "http://x.invalid/1", "[]", "[]"),
            ("N2", "news", "world", "Elections held", "", "http://x.invalid/2", "[]", "[]"),
            ("N3", "lifestyle", "food", "Ten recipes", "Cooking.", "http://x.invalid/3", "[]", "[]"),
            ("N4", "sports", "tennis", "Final set drama", "", "http://x.invalid/4", "[]", "[]"),
            ("N5", "finance", "markets", "Stocks rally", "", "http://x.invalid/5", "[]", "[]")]
    assert len(news[0]) == len(NEWS_COLUMNS)
    write(folder / "news.tsv", "".join("\t".join(r) + "\n" for r in news))
    write(folder / "behaviors.tsv",
          "1\tU1\t11/15/2019 8:55:22 AM\tN1 N2\tN3-1 N4-0\n"
          "2\tU2\t11/15/2019 9:00:00 AM\tN5\tN1-0 N2-1 N3-1\n"
          "3\tU1\t11/14/2019 7:00:00 PM\tN1 N2\tN5-1\n"
          "4\tU1\t11/15/2019 10:00:00 AM\tN1 N2\tN4-1 N1-0\n")
    return folder


def hm(folder: Path) -> Path:
    write(folder / "articles.csv",
          "article_id,product_code,prod_name,product_type_name,colour_group_name,detail_desc\n"
          '0108775015,0108775,Strap top,Vest top,Black,"Jersey top with narrow shoulder straps."\n'
          '0108775044,0108775,Strap top,Vest top,White,"Jersey top, narrow straps"\n'
          "0110065001,0110065,OP T-shirt (Idro),Bra,Black,Microfibre T-shirt bra\n")
    write(folder / "transactions_train.csv",
          "t_dat,customer_id,article_id,price,sales_channel_id\n"
          "2018-09-20,c1,0108775015,0.05,2\n2018-09-20,c1,0110065001,0.03,2\n2018-09-21,c1,0108775044,0.05,1\n"
          "2018-09-20,c2,0108775044,0.05,2\n2018-09-22,c2,0108775015,0.05,2\n2018-09-22,c2,0110065001,0.03,2\n")
    return folder


def table(folder: Path) -> Path:
    write(folder / "ratings.csv", "uid,iid,ts\na,x,3\na,y,1\na,z,2\nb,z,5\nb,x,6\nb,y,7\n")
    write(folder / "movies.csv", 'iid,name,about\nz,Zed,"last, but not least"\nx,Ex,first\ny,Why,second\n')
    return folder
